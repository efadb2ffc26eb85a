"""Accuracy of every task of the stream, and KL drift from the base model, at one evaluation point."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .streams.base import TaskStream, iterate_batches

SUBSET_SEED = 12345  # the same evaluation subset for every run, so methods are compared on the same examples


class Evaluator:
    """Evaluates a model on each task's test set in large batches under ``torch.inference_mode``.

    The model predicts among the outputs active after ``trained_task``: in ``task`` its task's
    head; in ``domain`` every output; in ``class`` with ``--class-outputs seen`` the outputs of
    tasks 0..trained_task (van de Ven & Tolias 2019), and for a task not trained yet those of
    tasks 0..that task (the outputs it will be learned with; over the seen ones alone its accuracy
    would be 0 by construction). Each row also holds the task's reference accuracies on the same
    outputs: ``chance_accuracy`` (a uniform guess among them) and ``majority_accuracy`` (always
    predicting the most frequent label of the task's test examples). KL drift is KL(p_base || p_current) on the same outputs,
    averaged over test examples. The base model is frozen, so its logits on each test set are
    computed once and kept. ``subset`` > 0 evaluates a fixed random subset of that many examples
    per task (long runs).

    Under a launcher (``world``, set by the loop) each rank runs the model on its contiguous part of every test
    set and the logits are gathered (``World.gather_rows``): every measure is then computed from the logits of
    all the examples, as in one process (counts exact, no average of the ranks' averages).
    """

    world = None  # the run's ``distributed.World`` under a launcher (set by the loop; not imported: a layer above)

    def __init__(self, stream: TaskStream, batch_size: int, device: torch.device, subset: int = 0):
        self.stream = stream
        self.batch_size = batch_size
        self.device = device
        self.index: list[torch.Tensor | None] = []
        g = torch.Generator().manual_seed(SUBSET_SEED)
        for t in stream.tasks:
            n = len(t.test)
            self.index.append(torch.randperm(n, generator=g)[:subset].sort().values if 0 < subset < n else None)
        self._base_id: int | None = None
        self._base_logits: dict[int, torch.Tensor] = {}
        self._base_log_probs: dict[tuple, torch.Tensor] = {}  # (task, outputs) -> the base's log-softmax there
        self._majority: dict[tuple, float] = {}  # (task, outputs) -> majority rate (the targets are fixed)
        self._outs_index: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def outputs_of(self, task: int, trained_task: int | None = None) -> list[int] | None:
        """The outputs task ``task`` is evaluated on after ``trained_task`` (None: every task trained); None: all."""
        layout = self.stream.layout
        if self.stream.scenario == "task":
            return layout.task_outputs[task]
        last = len(self.stream) - 1 if trained_task is None else trained_task
        return layout.active_outputs(max(last, task))

    def _logits(self, model: nn.Module, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All logits (float32, every output) and targets (output indices) of a task's test examples."""
        data, index, world = self.stream.tasks[task].test, self.index[task], self.world
        if world is not None and world.distributed:
            index = torch.arange(len(data)) if index is None else index
            n, index = len(index), world.part(index)
            if len(index) == 0:  # fewer examples than ranks: one example's pass gives the logits' width
                logits, targets = self._logits_of(model, data, task, torch.zeros(1, dtype=torch.long))
                logits, targets = logits[:0], targets[:0]
            else:
                logits, targets = self._logits_of(model, data, task, index)
            for _ in range(world.passes_owed(n, self.batch_size) if world.fsdp else 0):  # FSDP: a forward is a
                self._logits_of(model, data, task, torch.zeros(1, dtype=torch.long))  # collective: as many as the rest
            return world.gather_rows(logits), world.gather_rows(targets)
        return self._logits_of(model, data, task, index)

    def _logits_of(self, model: nn.Module, data, task: int, index: torch.Tensor | None):
        chunks, targets = [], []
        for batch in iterate_batches(data, task, self.batch_size, shuffle=False, index=index, views=True):
            batch = batch.to(self.device)
            chunks.append(model(batch.inputs).float())
            targets.append(batch.targets)
        return torch.cat(chunks), torch.cat(targets)

    def _restrict(self, logits: torch.Tensor, targets: torch.Tensor, outs: list[int] | None):
        """Logits on ``outs`` only and targets as positions among them (unchanged when ``outs`` is None)."""
        if outs is None:
            return logits, targets
        idx, position = self._outputs_index(outs, logits.shape[1], logits.device)
        return logits.index_select(1, idx), position[targets]

    def _outputs_index(self, outs: list[int], n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``outs`` as an index tensor and each output's position among them (-1: not among them); made once."""
        key = (tuple(outs), n, str(device))
        if key not in self._outs_index:
            idx = torch.as_tensor(outs, device=device)
            position = torch.full((n,), -1, dtype=torch.long, device=device)
            position[idx] = torch.arange(len(outs), device=device)
            self._outs_index[key] = idx, position
        return self._outs_index[key]

    def accuracy(self, logits: torch.Tensor, targets: torch.Tensor, task: int, outs: list[int] | None) -> float:
        """Share of argmax predictions that are right: the target, or one of its answer set (``Task.answers``)."""
        pred = logits.argmax(1)
        table = getattr(self.stream.tasks[task], "answers", None)
        if table is None:
            return float((pred == targets).float().mean())
        if outs is not None:  # back to output indices
            idx = torch.as_tensor(outs, device=pred.device)
            pred, targets = idx[pred], idx[targets]
        return float(table.to(pred.device)[targets, pred].float().mean())

    def base_logits(self, base_model: nn.Module, task: int) -> torch.Tensor:
        """The base model's logits on every output for a task's test examples (computed once)."""
        if self._base_id != id(base_model):
            self._base_id, self._base_logits, self._base_log_probs = id(base_model), {}, {}
        if task not in self._base_logits:
            self._base_logits[task] = self._logits(base_model, task)[0]
        return self._base_logits[task]

    def base_log_probs(self, base_model: nn.Module, task: int, outs: list[int] | None) -> torch.Tensor:
        """The base model's log-softmax over ``outs`` on a task's test examples (computed once)."""
        base = self.base_logits(base_model, task)
        key = (task, None if outs is None else tuple(outs))
        if key not in self._base_log_probs:
            if outs is not None:
                base = base.index_select(1, self._outputs_index(outs, base.shape[1], base.device)[0])
            self._base_log_probs[key] = F.log_softmax(base, 1)
        return self._base_log_probs[key]

    def _no_grad(self):
        """Inference mode; under FSDP no_grad (its all-gathered parameters are written in place at the next
        training forward, which an inference tensor refuses)."""
        world = self.world
        return torch.no_grad() if world is not None and getattr(world, "fsdp", False) else torch.inference_mode()

    def evaluate_task(self, model: nn.Module, task: int, base_model: nn.Module | None = None,
                      trained_task: int | None = None) -> dict:
        was_training = model.training
        model.eval()
        try:
            with self._no_grad():
                return self._measure(model, task, base_model, trained_task)
        finally:
            model.train(was_training)

    def _measure(self, model: nn.Module, task: int, base_model: nn.Module | None, trained_task: int | None) -> dict:
        """One task's row; the model is in eval mode, under inference mode. The loss is the cross-entropy
        written as its two steps (``F.cross_entropy`` computes exactly these), so the KL drift reuses the
        log-softmax; the base model's log-softmax and the task's majority rate are computed once."""
        outs = self.outputs_of(task, trained_task)
        logits, targets = self._restrict(*self._logits(model, task), outs)
        n = len(targets)
        accuracy = self.accuracy(logits, targets, task, outs)
        key = (task, None if outs is None else tuple(outs))
        if key not in self._majority:
            self._majority[key] = float(torch.bincount(targets).max()) / max(n, 1)
        majority = self._majority[key]
        log_probs = F.log_softmax(logits, 1)
        loss = float(F.nll_loss(log_probs, targets))
        kl = float("nan")
        if base_model is not None:
            kl = float(F.kl_div(log_probs, self.base_log_probs(base_model, task, outs),
                                reduction="batchmean", log_target=True))
        return {
            "eval_task": task,
            "eval_task_name": self.stream.tasks[task].name,
            "accuracy": accuracy,
            "loss": loss,
            "kl_base": kl,
            "n_eval": n,
            "chance_accuracy": 1.0 / logits.shape[1],
            "majority_accuracy": majority,
        }

    def evaluate(self, model: nn.Module, base_model: nn.Module | None = None, trained_task: int | None = None) -> list[dict]:
        """One row per task of the stream, seen and unseen (unseen ones give forward transfer).

        ``trained_task``: the last task trained (-1 before any; None: every task), which sets the
        active outputs in ``class``. The model is switched to eval mode once for all tasks.
        """
        was_training = model.training
        model.eval()
        try:
            with self._no_grad():
                return [self._measure(model, k, base_model, trained_task) for k in range(len(self.stream))]
        finally:
            model.train(was_training)
