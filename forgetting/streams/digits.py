"""split-digits: scikit-learn's bundled 8x8 digits in 5 tasks of 2 digits. Needs no download."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from .splits import class_split_stream, permuted_stream, stratified_split

CLASS_GROUPS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
SPLIT_SEED = 0
TEST_SIZE = 0.3


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images [n, 8, 8] (values 0-16) and labels that ``sklearn.datasets.load_digits`` returns.

    Read from scikit-learn's bundled ``digits.csv.gz`` as load_digits reads it, without importing
    scikit-learn (whose import costs a run about as much as torch's; a test compares the two).
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ValueError("split-digits needs scikit-learn installed (its bundled digits.csv.gz)")
    with gzip.open(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", "rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def load_arrays():
    """Digits scaled to [0, 1], split 70/30 stratified with a fixed seed (1,257 / 540 images)."""
    images, target = load_digits_arrays()
    x = (images / 16.0).astype(np.float32)
    y = target.astype(np.int64)
    return stratified_split(x, y, TEST_SIZE, SPLIT_SEED)


def build_split(scenario: str, options: dict):
    x_tr, x_te, y_tr, y_te = load_arrays()
    return class_split_stream("split-digits", scenario, x_tr, y_tr, x_te, y_te, CLASS_GROUPS, (1, 8, 8),
                              info={"source": "sklearn.datasets.load_digits", "split_seed": SPLIT_SEED})


def build_permuted(scenario: str, options: dict):
    x_tr, x_te, y_tr, y_te = load_arrays()
    return permuted_stream("permuted-digits", scenario, x_tr, y_tr, x_te, y_te, options["n_tasks"], (1, 8, 8),
                           seed=SPLIT_SEED, info={"source": "sklearn.datasets.load_digits"})
