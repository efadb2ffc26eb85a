"""Accuracy of every task of the stream, and KL drift from the base model, at one evaluation point."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .streams.base import TaskStream, iterate_batches

SUBSET_SEED = 12345  # the same evaluation subset for every run, so methods are compared on the same examples


class Evaluator:
    """Evaluates a model on each task's test set in large batches under ``torch.inference_mode``.

    In ``task`` the model predicts among its task's head only; otherwise among all outputs.
    KL drift is KL(p_base || p_current) on the same outputs, averaged over test examples. The
    base model is frozen, so its logits on each test set are computed once and kept.
    ``subset`` > 0 evaluates a fixed random subset of that many examples per task (long runs).
    """

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

    def outputs_of(self, task: int) -> list[int] | None:
        return self.stream.layout.task_outputs[task] if self.stream.scenario == "task" else None

    def _logits(self, model: nn.Module, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All logits (float32, on the task's outputs) and targets of a task's test examples."""
        outs = self.outputs_of(task)
        chunks, targets = [], []
        for batch in iterate_batches(self.stream.tasks[task].test, task, self.batch_size, shuffle=False,
                                     index=self.index[task]):
            batch = batch.to(self.device)
            logits = model(batch.inputs)
            chunks.append((logits if outs is None else logits[:, outs]).float())
            targets.append(batch.targets if outs is None else batch.targets - outs[0])
        return torch.cat(chunks), torch.cat(targets)

    def base_logits(self, base_model: nn.Module, task: int) -> torch.Tensor:
        if self._base_id != id(base_model):
            self._base_id, self._base_logits = id(base_model), {}
        if task not in self._base_logits:
            self._base_logits[task] = self._logits(base_model, task)[0]
        return self._base_logits[task]

    def evaluate_task(self, model: nn.Module, task: int, base_model: nn.Module | None = None) -> dict:
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                logits, targets = self._logits(model, task)
                n = len(targets)
                accuracy = float((logits.argmax(1) == targets).float().mean())
                loss = float(F.cross_entropy(logits, targets))
                kl = float("nan")
                if base_model is not None:
                    base = self.base_logits(base_model, task)
                    kl = float(F.kl_div(F.log_softmax(logits, 1), F.log_softmax(base, 1),
                                        reduction="batchmean", log_target=True))
        finally:
            model.train(was_training)
        return {
            "eval_task": task,
            "eval_task_name": self.stream.tasks[task].name,
            "accuracy": accuracy,
            "loss": loss,
            "kl_base": kl,
            "n_eval": n,
        }

    def evaluate(self, model: nn.Module, base_model: nn.Module | None = None) -> list[dict]:
        """One row per task of the stream, seen and unseen (unseen ones give forward transfer)."""
        return [self.evaluate_task(model, k, base_model) for k in range(len(self.stream))]
