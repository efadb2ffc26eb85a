"""Building streams from labelled arrays: split by classes, or permute the pixels per task."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from .base import Task, TaskStream, TensorData, layout_for


def stratified_split(x: np.ndarray, y: np.ndarray, test_size: float, seed: int):
    """Train and test parts with the same class proportions, fixed by ``seed``."""
    return train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)


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
