"""What is learned, in order: tasks, their data, and the output layout each scenario needs.

A model has one output layer; each scenario reads it differently (van de Ven & Tolias 2019):

- ``task``:   one block of outputs per task (a head per task); the task id picks the block.
- ``domain``: one shared block; every task uses the same label space.
- ``class``:  one block over all classes of all tasks; no task id at test time. By default
  (``class_outputs="seen"``, van de Ven & Tolias 2019) only the outputs of tasks <= t are
  active while task t trains and when the model is evaluated after it: outputs of classes not
  seen yet take no part in the softmax. ``"all"`` makes every output active from task 0 on.

Targets in every dataset are *output indices* (task: block offset + local label; domain:
local label; class: global class), so one masked cross-entropy serves all three scenarios.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import torch
from torch import Tensor

SCENARIOS = ("task", "domain", "class")
CLASS_OUTPUTS = ("seen", "all")

Inputs = Any  # a Tensor, or a dict of Tensors for text models


@dataclass
class Batch:
    """A training or evaluation batch.

    ``index`` holds each example's position in its task's training set (-1 where that does not
    apply, e.g. replayed examples), so per-example caches can look outputs up.
    """

    inputs: Inputs
    targets: Tensor
    task_ids: Tensor
    index: Tensor

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(_to(self.inputs, device), self.targets.to(device), self.task_ids.to(device), self.index.to(device))

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def _to(inputs: Inputs, device) -> Inputs:
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: _to(v, device) for k, v in inputs.items()}
    return inputs


class TaskData(Protocol):
    """Examples of one split of one task, gathered into batches by index."""

    def __len__(self) -> int: ...

    def gather(self, index: Tensor) -> tuple[Inputs, Tensor]:
        """Inputs and targets (output indices) of the examples at ``index``."""
        ...


class TensorData:
    """Examples held as tensors in memory: gathering a batch is one indexing operation."""

    def __init__(self, inputs: Tensor, targets: Tensor):
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(f"{inputs.shape[0]} inputs but {targets.shape[0]} targets")
        self.inputs = inputs
        self.targets = targets.long()

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def gather(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.inputs[index], self.targets[index]


@dataclass
class Task:
    """One task of a stream: its name, its train and test data, and the classes it holds.

    ``classes`` are the task's global class ids (in the source's numbering, for display);
    ``outputs`` the model output indices its targets use. ``answers`` (optional, bool
    [target values, outputs]) declares a *set* of correct answers per target: a prediction ``o`` of
    an example with target ``y`` is right when ``answers[y, o]`` (ParityMNIST: every digit of the
    right parity); None: only the target itself.
    """

    task_id: int
    name: str
    train: TaskData
    test: TaskData
    classes: list[Any]
    outputs: list[int]
    answers: Tensor | None = None


@dataclass
class HeadLayout:
    """Which model outputs each task uses, for training, evaluation and the penalty.

    ``class_outputs`` (``class`` scenario only): ``seen`` makes the outputs of tasks <= t the
    active ones while task t trains and when evaluating after it; ``all`` makes every output active.
    """

    scenario: str
    task_outputs: list[list[int]]  # output indices per task
    n_outputs: int
    class_outputs: str = "seen"
    _masks: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def active_outputs(self, task: int) -> list[int] | None:
        """The outputs a model chooses among while training ``task`` and when evaluated after it.

        ``class`` with ``seen``: the outputs of tasks 0..task (sorted); None where every output
        is active (``domain``, ``class`` with ``all``, or once every task is seen). In ``task``
        each example has its own head (``mask``); this returns None there too.
        """
        if self.scenario != "class" or self.class_outputs == "all":
            return None
        outs = sorted({o for outs in self.task_outputs[: max(task, 0) + 1] for o in outs})
        return None if len(outs) == self.n_outputs else outs

    def mask(self, task_ids: Tensor, task: int) -> Tensor:
        """Boolean [batch, n_outputs]: True where an example may predict while ``task`` trains.

        In ``task`` only the example's own head; in ``domain`` every output; in ``class`` the
        active outputs of ``task`` (``active_outputs``), the same for every example.
        """
        n = task_ids.shape[0]
        return self._allowed(task, task_ids.device)[task_ids if self.scenario == "task" else
                                                      torch.zeros(n, dtype=torch.long, device=task_ids.device)]

    def _allowed(self, task: int, device) -> Tensor:
        """Rows of allowed outputs: one per task's head in ``task``, else one row for ``task``; cached."""
        key = (self.scenario, self.class_outputs, -1 if self.scenario == "task" else task, str(device))
        if key not in self._masks:
            if self.scenario == "task":
                allowed = torch.zeros(len(self.task_outputs), self.n_outputs, dtype=torch.bool)
                for t, outs in enumerate(self.task_outputs):
                    allowed[t, outs] = True
            else:
                active = self.active_outputs(task)
                allowed = torch.zeros(1, self.n_outputs, dtype=torch.bool)
                allowed[0, slice(None) if active is None else active] = True
            self._masks[key] = allowed.to(device)
        return self._masks[key]

    def masked(self, logits: Tensor, task_ids: Tensor, task: int) -> Tensor:
        """Logits with the outputs an example may not predict while ``task`` trains set to -inf."""
        if self.scenario == "task":
            return logits.masked_fill(~self.mask(task_ids, task), float("-inf"))
        if self.active_outputs(task) is None:
            return logits
        return logits.masked_fill(~self._allowed(task, logits.device)[0], float("-inf"))

    def penalty_outputs(self, task: int) -> list[list[int]]:
        """Output groups the penalty holds while fine-tuning on ``task``: one per old head.

        ``task``: every old task's head (LwF); ``domain``: the shared head; ``class``: the
        outputs of the classes seen before ``task`` (the teacher knows nothing of the new ones).
        """
        if task == 0:
            return []
        if self.scenario == "task":
            return [list(o) for o in self.task_outputs[:task]]
        if self.scenario == "domain":
            return [list(range(self.n_outputs))]
        old = sorted({o for outs in self.task_outputs[:task] for o in outs})
        return [old]


@dataclass
class TaskStream:
    """Tasks in the order they are learned, with the layout their scenario needs.

    ``deterministic_inputs`` is False where a training example's input changes between
    visits (augmentation): per-example caches of teacher outputs are then not exact.
    ``objective`` names the run's objective (``forgetting.objectives``): how the loop, the methods
    and the evaluator read a model's outputs on it.
    """

    name: str
    scenario: str
    tasks: list[Task]
    layout: HeadLayout
    input_kind: str  # "tensor" or "text"
    input_shape: tuple[int, ...] = ()
    deterministic_inputs: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    objective: str = "classification"  # what a model of it predicts (forgetting.objectives names them)
    eval_only: int = 0  # the last this many tasks are measured at every evaluation but never trained

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def n_learned(self) -> int:
        """The tasks the loop trains, in order (the evaluation-only tasks come after them)."""
        return len(self.tasks) - self.eval_only

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)


def layout_for(scenario: str, n_tasks: int, classes_per_task: Sequence[int]) -> HeadLayout:
    """The output layout of a scenario for tasks of the given sizes.

    ``domain`` requires every task to have the same number of classes.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: allowed are {', '.join(SCENARIOS)}")
    if scenario == "domain":
        k = classes_per_task[0]
        if any(c != k for c in classes_per_task):
            raise ValueError("domain-incremental needs the same number of classes in every task")
        return HeadLayout(scenario, [list(range(k)) for _ in range(n_tasks)], k)
    outs, start = [], 0
    for c in classes_per_task:
        outs.append(list(range(start, start + c)))
        start += c
    return HeadLayout(scenario, outs, start)


def iterate_batches(
    data: TaskData,
    task_id: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    index: Tensor | None = None,
    views: bool = False,
) -> Iterator[Batch]:
    """Batches over ``data`` (or over its examples at ``index``), shuffled with ``generator``.

    ``views``: in order over all of a ``TensorData``, the batches may be views of its tensors instead of
    copies (for readers that do not write to them: evaluation, the teacher cache). A view is taken only
    where it is laid out as the copy would be (contiguous, 64-byte aligned), so the numbers are the same."""
    idx = torch.arange(len(data)) if index is None else index
    if shuffle:
        idx = idx[torch.randperm(len(idx), generator=generator)]
    viewable = views and not shuffle and index is None and isinstance(data, TensorData) \
        and data.inputs.is_contiguous()
    for start in range(0, len(idx), batch_size):
        b = idx[start : start + batch_size]
        if viewable and data.inputs[start].data_ptr() % 64 == 0:
            inputs, targets = data.inputs[start : start + batch_size], data.targets[start : start + batch_size]
        else:
            inputs, targets = data.gather(b)
        yield Batch(inputs, targets, torch.full((len(b),), task_id, dtype=torch.long), b)


def concat_inputs(parts: Sequence[Inputs], pad_value: int = 0) -> Inputs:
    """Inputs of several batches joined along the batch dimension.

    Tensors are concatenated. Dicts (padded token tensors of text models) are joined key by key;
    values of shape [batch, length] with different lengths are first right-padded to the
    longest with ``pad_value`` (0: BERT's [PAD] id, and a zero attention mask); ``labels`` (causal
    LMs' per-token targets) are padded with -100, the ignored label.
    """
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(list(parts), dim=0)
    if isinstance(first, dict):
        out = {}
        for key in first:
            values = [p[key] for p in parts]
            if values[0].dim() >= 2:
                length = max(v.shape[1] for v in values)
                fill = -100 if key == "labels" else pad_value
                values = [torch.nn.functional.pad(v, (0, 0) * (v.dim() - 2) + (0, length - v.shape[1]), value=fill)
                          for v in values]
            out[key] = torch.cat(values, dim=0)
        return out
    raise TypeError(f"cannot concatenate inputs of type {type(first).__name__}")


def gather_examples(datasets: Sequence[TaskData], task_ids: Tensor, index: Tensor) -> Batch:
    """One batch of examples from several tasks' data: example i is ``datasets[task_ids[i]]`` at ``index[i]``.

    Joint training and replay use it to mix tasks in one batch. Examples come grouped by task
    (ascending task id, the given order within a task); ``Batch.index`` holds each one's index in its own task.
    """
    inputs, targets, tids, idx = [], [], [], []
    for t in torch.unique(task_ids).tolist():
        rows = index[task_ids == t]
        x, y = datasets[t].gather(rows)
        inputs.append(x)
        targets.append(y)
        tids.append(torch.full((len(rows),), t, dtype=torch.long))
        idx.append(rows)
    return Batch(concat_inputs(inputs), torch.cat(targets), torch.cat(tids), torch.cat(idx))
