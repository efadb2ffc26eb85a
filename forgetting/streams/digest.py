"""Content digests of the data files a stream reads, so that a run's id changes when its data does.

A stream module may define ``data_fingerprint(options) -> dict`` (file name -> digest); the
config records it and hashes it into the run id, and the manifest records it. The digest is the
SHA-256 of the file's bytes; a file above ``SAMPLE_ABOVE`` bytes is digested from its size and
``SAMPLES`` evenly spaced 1 MiB pieces instead (prefixed ``sampled-sha256:``), a second per
terabyte rather than minutes. Digests are kept per process by (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

SAMPLE_ABOVE = 1 << 30
SAMPLES, PIECE = 64, 1 << 20
_cache: dict[tuple, str] = {}


def file_digest(path: str | Path) -> str | None:
    """``sha256:<hex>`` (or ``sampled-sha256:<hex>`` for a file above SAMPLE_ABOVE bytes); None if no file."""
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except OSError:
        return None  # the stream's builder says what is missing
    if not stat.S_ISREG(st.st_mode):
        return None  # a directory, a device (/dev/zero never ends), a pipe: the builder refuses it
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            if st.st_size <= SAMPLE_ABOVE:
                for block in iter(lambda: f.read(PIECE), b""):
                    h.update(block)
                kind = "sha256"
            else:
                h.update(str(st.st_size).encode())
                for i in range(SAMPLES):
                    f.seek((st.st_size - PIECE) * i // (SAMPLES - 1))
                    h.update(f.read(PIECE))
                kind = "sampled-sha256"
        _cache[key] = f"{kind}:{h.hexdigest()}"
    return _cache[key]


def digests(paths) -> dict[str, str]:
    """``{file name: digest}`` of the files that exist (names, not paths: moving the data keeps the id)."""
    out = {}
    for p in paths:
        d = file_digest(p) if p else None
        if d is not None:
            out[os.path.basename(str(p))] = d
    return out
