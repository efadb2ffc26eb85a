"""MNIST streams (split and permuted) read from IDX files in ``--data-dir``.

The reader takes the original IDX format, gzipped or not, from ``DATA_DIR/mnist``,
``DATA_DIR/MNIST/raw`` (where torchvision's download puts it) or ``DATA_DIR`` itself. With the
full training set present it is used as the training data; with only the 10,000-image test set
(as in ../shared/data/mnist), that set is split 80/20 into train and test parts by a fixed seed.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import BadInput
from ..extras import require
from .digest import digests
from .local import data_root, downloading
from .splits import class_split_stream, permuted_stream, stratified_split

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
CLASS_GROUPS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
SPLIT_SEED = 0
TEST_SIZE = 0.2


def _open(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise BadInput(f"cannot read MNIST file {path}: {e}") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX array (ubyte): big-endian magic, big-endian dimension sizes, then the data."""
    raw = _open(path)
    if len(raw) < 8:
        raise BadInput(f"malformed IDX file {path}: {len(raw)} bytes is shorter than its header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise BadInput(f"malformed IDX file {path}: magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise BadInput(f"malformed IDX file {path}: truncated header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise BadInput(f"malformed IDX file {path}: {len(raw) - header} data bytes, header says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(data_dir: Path, stem: str) -> Path | None:
    for folder in (data_dir / "mnist", data_dir / "MNIST" / "raw", data_dir):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def _pair(data_dir: Path, prefix: str):
    images, labels = _find(data_dir, f"{prefix}-images-idx3-ubyte"), _find(data_dir, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        return None
    x = read_idx(images, IMAGES_MAGIC)
    y = read_idx(labels, LABELS_MAGIC)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
        raise BadInput(f"malformed MNIST files {images} and {labels}: shapes {x.shape} and {y.shape}")
    if y.max(initial=0) > 9:
        raise BadInput(f"malformed MNIST labels {labels}: label {int(y.max())} outside 0-9")
    return (x.astype(np.float32) / 255.0), y.astype(np.int64)


def data_fingerprint(options: dict) -> dict:
    """The digests of the IDX files the stream reads (the same files ``load_arrays`` finds)."""
    data_dir = options.get("data_dir")
    if data_dir is None or not Path(data_dir).is_dir():
        return {}
    return digests(_find(Path(data_dir), f"{prefix}-{kind}") for prefix in ("train", "t10k")
                   for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))


def fetch(root: Path) -> None:
    """torchvision's MNIST download of the four IDX files into ``root/MNIST/raw`` (md5-checked), ``root``
    created if missing; nothing when ``root`` already holds both pairs. A failed download removes what it
    wrote (a partial ``.gz`` would otherwise be read as data next time) and is one BadInput line."""
    if all(_find(root, f"{prefix}-{kind}") for prefix in ("train", "t10k")
           for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")):
        return
    require("vision", "--download of MNIST")
    from torchvision.datasets import MNIST  # users with a network: torchvision fetches the IDX files

    with downloading(root, "MNIST"):
        MNIST(str(root), train=True, download=True)
        MNIST(str(root), train=False, download=True)


def load_arrays(data_dir: str | None, download: bool = False):
    root = data_root(data_dir, download, "MNIST")  # with --download and no --data-dir: the download cache
    if download:
        fetch(root)
    data_dir = str(root)
    test = _pair(root, "t10k")
    train = _pair(root, "train")
    if test is None and train is None:
        raise BadInput(f"--data-dir: no MNIST IDX files (t10k-images-idx3-ubyte[.gz] and labels) under {data_dir!r}")
    if train is not None and test is not None:
        return train[0], test[0], train[1], test[1], {"split": "official train/test"}
    x, y = test if test is not None else train
    x_tr, x_te, y_tr, y_te = stratified_split(x, y, TEST_SIZE, SPLIT_SEED)
    return x_tr, x_te, y_tr, y_te, {"split": f"{len(x)} images split {1 - TEST_SIZE:.0%}/{TEST_SIZE:.0%} stratified, seed {SPLIT_SEED}"}


def build_split(scenario: str, options: dict):
    x_tr, x_te, y_tr, y_te, info = load_arrays(options.get("data_dir"), options.get("download", False))
    return class_split_stream("split-mnist", scenario, x_tr, y_tr, x_te, y_te, CLASS_GROUPS, (1, 28, 28), info=info)


def build_permuted(scenario: str, options: dict):
    x_tr, x_te, y_tr, y_te, info = load_arrays(options.get("data_dir"), options.get("download", False))
    return permuted_stream("permuted-mnist", scenario, x_tr, y_tr, x_te, y_te, options["n_tasks"], (1, 28, 28),
                           seed=SPLIT_SEED, info=info)
