"""Tiny CIFAR folders in the real on-disk format (Python pickles of dicts, as the CIFAR authors ship them).

Each batch file holds ``data`` (uint8 [N, 3072]: the red plane row by row, then green, then
blue), the labels (``labels`` in CIFAR-10, ``fine_labels``/``coarse_labels`` in CIFAR-100),
``filenames`` and ``batch_label``; the meta file holds the class names.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, per_class_train: int = 3, per_class_test: int = 2) -> dict:
    """``root/cifar-10-batches-py`` with 5 training batches and a test batch; returns the arrays written."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    y_train = np.tile(np.arange(10), per_class_train)
    x_train = images(len(y_train), 0)
    for b, part in enumerate(np.array_split(np.arange(len(y_train)), 5)):
        _dump(folder / f"data_batch_{b + 1}", {"batch_label": f"training batch {b + 1} of 5", "data": x_train[part],
                                                "labels": y_train[part].tolist(),
                                                "filenames": [f"img_{i}.png" for i in part]})
    y_test = np.tile(np.arange(10), per_class_test)
    x_test = images(len(y_test), 1)
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": x_test, "labels": y_test.tolist(),
                                  "filenames": [f"t_{i}.png" for i in range(len(y_test))]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": len(y_train) // 5, "num_vis": 3072})
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def write_cifar100(root: Path, per_class_train: int = 2, per_class_test: int = 1) -> dict:
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, per_class, seed in (("train", per_class_train, 2), ("test", per_class_test, 3)):
        y = np.tile(np.arange(100), per_class)
        x = images(len(y), seed)
        _dump(folder / split, {"batch_label": split, "data": x, "fine_labels": y.tolist(),
                               "coarse_labels": (y // 5).tolist(), "filenames": [f"{split}_{i}.png" for i in range(len(y))]})
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    _dump(folder / "meta", {"fine_label_names": [f"class{c}" for c in range(100)],
                            "coarse_label_names": [f"super{c}" for c in range(20)]})
    return out
