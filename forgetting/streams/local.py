"""Where a stream that reads local files finds them, and where ``--download`` puts them."""

from __future__ import annotations

import os
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
