"""Where a stream that reads local files finds them, and where ``--download`` puts them."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import BadInput


def download_cache() -> Path:
    """Where ``--download`` puts data when no ``--data-dir`` is given: $XDG_CACHE_HOME/forgetting, else ~/.cache/forgetting."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "forgetting"


def data_root(data_dir: str | None, download: bool, what: str) -> Path:
    """The folder to read ``what`` from: ``data_dir``, or with ``download`` and none given, the download cache.

    Without ``download`` the folder must exist; with it, it is created by the download.
    """
    if data_dir is None:
        if not download:
            raise BadInput(f"--data-dir: {what} streams need a data directory holding the files (or --download)")
        return download_cache()
    root = Path(data_dir)
    if not download and not root.is_dir():
        raise BadInput(f"--data-dir: {data_dir!r} is not a directory")
    return root


@contextmanager
def downloading(root: Path, what: str):
    """Around a download into ``root`` (created if missing): on failure, remove every file and folder it
    wrote (a half archive would otherwise be read as data next time) and say why in one BadInput line."""
    root = Path(root)
    made = [p for p in (root, *root.parents) if not p.exists()]  # folders this download creates
    before = set(root.rglob("*")) if root.exists() else set()
    try:
        yield
    except BaseException as e:
        new = set(root.rglob("*")) - before if root.exists() else set()
        for q in sorted(new, key=lambda q: len(q.parts), reverse=True):  # deepest first: files, then folders
            if q.is_dir() and not q.is_symlink():
                q.rmdir()
            else:
                q.unlink(missing_ok=True)
        for q in made:
            if q.is_dir() and not any(q.iterdir()):
                q.rmdir()
        if isinstance(e, (RuntimeError, OSError)):  # torchvision: every mirror failed, a dropped connection, an md5 mismatch
            reason = " ".join(str(e).split())
            raise BadInput(f"--download: could not fetch {what} into {str(root)!r}: {reason[:300]}") from None
        raise
