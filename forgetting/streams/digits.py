"""split-digits: scikit-learn's bundled 8x8 digits in 5 tasks of 2 digits. Needs no download."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from .splits import class_split_stream, permuted_stream, stratified_split

CLASS_GROUPS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
SPLIT_SEED = 0
TEST_SIZE = 0.3


def load_arrays():
    """Digits scaled to [0, 1], split 70/30 stratified with a fixed seed (1,257 / 540 images)."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    return stratified_split(x, y, TEST_SIZE, SPLIT_SEED)


def build_split(scenario: str, options: dict):
    x_tr, x_te, y_tr, y_te = load_arrays()
    return class_split_stream("split-digits", scenario, x_tr, y_tr, x_te, y_te, CLASS_GROUPS, (1, 8, 8),
                              info={"source": "sklearn.datasets.load_digits", "split_seed": SPLIT_SEED})


def build_permuted(scenario: str, options: dict):
    x_tr, x_te, y_tr, y_te = load_arrays()
    return permuted_stream("permuted-digits", scenario, x_tr, y_tr, x_te, y_te, options["n_tasks"], (1, 8, 8),
                           seed=SPLIT_SEED, info={"source": "sklearn.datasets.load_digits"})
