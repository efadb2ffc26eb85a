"""Building streams from labelled arrays: split by classes, or permute the pixels per task."""

from __future__ import annotations

from typing import Sequence

import math

import numpy as np
import torch

from .base import Task, TaskStream, TensorData, layout_for


def stratified_split(x: np.ndarray, y: np.ndarray, test_size: float, seed: int):
    """Train and test parts with the same class proportions, fixed by ``seed``.

    The very split ``sklearn.model_selection.train_test_split(x, y, test_size=test_size,
    random_state=seed, stratify=y)`` returns (StratifiedShuffleSplit's algorithm, step for step on
    the same ``RandomState``; tests compare the two), written out because importing scikit-learn
    costs a run about as much as importing torch.
    """
    n_test = math.ceil(test_size * len(y))
    train_idx, test_idx = stratified_indices(y, len(y) - n_test, seed)
    return x[train_idx], x[test_idx], y[train_idx], y[test_idx]


def stratified_indices(y, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of ``train_test_split(..., train_size=n_train, random_state=seed, stratify=y)``:
    ``n_train`` examples and the other ``len(y) - n_train``, each part with the classes' proportions. A
    ValueError, as scikit-learn's, when a class has one example or a part is smaller than the number of classes."""
    y = np.asarray(y)
    n = len(y)
    n_test = n - n_train
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    if class_counts.min() < 2 or n_train < len(classes) or n_test < len(classes):
        raise ValueError(f"cannot split {n} examples of {len(classes)} classes (smallest class: "
                         f"{class_counts.min()}) into {n_train} train and {n_test} test examples, stratified")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        perm = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(perm[: n_i[i]])
        test.extend(perm[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def shuffled_indices(n: int, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of ``train_test_split(..., train_size=n_train, random_state=seed)`` without
    ``stratify`` (ShuffleSplit's: one permutation, its first ``n - n_train`` the test part)."""
    permutation = np.random.RandomState(seed).permutation(n)
    return permutation[n - n_train:], permutation[: n - n_train]


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Examples per class in a draw of ``n_draws`` (scikit-learn's ``_approximate_mode``): the floored
    proportional shares, then one more for the largest remainders, ties broken by ``rng``."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def class_split_stream(
    name: str,
    scenario: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_groups: Sequence[Sequence[int]],
    input_shape: tuple[int, ...],
    info: dict | None = None,
) -> TaskStream:
    """One task per group of classes (split MNIST: (0,1), (2,3), ...)."""
    layout = layout_for(scenario, len(class_groups), [len(g) for g in class_groups])
    tasks = []
    for t, group in enumerate(class_groups):
        outs = layout.task_outputs[t]
        to_output = {c: outs[i] for i, c in enumerate(group)}

        def part(x, y):
            keep = np.isin(y, group)
            xs = torch.as_tensor(x[keep], dtype=torch.float32).reshape(-1, *input_shape)
            ys = torch.as_tensor([to_output[int(c)] for c in y[keep]], dtype=torch.long)
            return TensorData(xs, ys)

        label = "/".join(str(c) for c in group)
        tasks.append(Task(t, f"{name}[{label}]", part(x_train, y_train), part(x_test, y_test), list(group), outs))
    return TaskStream(name, scenario, tasks, layout, "tensor", tuple(input_shape), info=dict(info or {}))


def permuted_stream(
    name: str,
    scenario: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    n_tasks: int,
    input_shape: tuple[int, ...],
    seed: int,
    info: dict | None = None,
) -> TaskStream:
    """Task 0 is the original images; task t > 0 applies a fixed random pixel permutation."""
    classes = sorted(int(c) for c in np.unique(np.concatenate([y_train, y_test])))
    layout = layout_for(scenario, n_tasks, [len(classes)] * n_tasks)
    rng = np.random.default_rng(seed)
    n_pixels = int(np.prod(input_shape))
    tasks = []
    for t in range(n_tasks):
        perm = np.arange(n_pixels) if t == 0 else rng.permutation(n_pixels)
        outs = layout.task_outputs[t]

        def part(x, y):
            xs = torch.as_tensor(x.reshape(len(x), -1)[:, perm], dtype=torch.float32).reshape(-1, *input_shape)
            ys = torch.as_tensor([outs[classes.index(int(c))] for c in y], dtype=torch.long)
            return TensorData(xs, ys)

        tasks.append(Task(t, f"{name}[{t}]", part(x_train, y_train), part(x_test, y_test), classes, outs))
    return TaskStream(name, scenario, tasks, layout, "tensor", tuple(input_shape), info=dict(info or {}))
