"""Accuracy of every task of the stream, and KL drift from the base model, at one evaluation point."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .streams.base import Batch, TaskStream, iterate_batches


def _sliced(logits: torch.Tensor, outputs: list[int] | None) -> torch.Tensor:
    return logits if outputs is None else logits[:, outputs]


class Evaluator:
    """Evaluates a model on each task's test set in large batches under ``torch.inference_mode``.

    In ``task`` the model predicts among its task's head only; otherwise among all outputs.
    KL drift is KL(p_base || p_current) on the same outputs, averaged over test examples.
    """

    def __init__(self, stream: TaskStream, batch_size: int, device: torch.device):
        self.stream = stream
        self.batch_size = batch_size
        self.device = device

    def outputs_of(self, task: int) -> list[int] | None:
        return self.stream.layout.task_outputs[task] if self.stream.scenario == "task" else None

    def evaluate_task(self, model: nn.Module, task: int, base_model: nn.Module | None = None) -> dict:
        t = self.stream.tasks[task]
        outs = self.outputs_of(task)
        correct, loss_sum, kl_sum, n = 0, 0.0, 0.0, 0
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for batch in iterate_batches(t.test, task, self.batch_size, shuffle=False):
                    batch: Batch = batch.to(self.device)
                    logits = _sliced(model(batch.inputs), outs).float()
                    targets = batch.targets if outs is None else batch.targets - outs[0]
                    correct += int((logits.argmax(1) == targets).sum())
                    loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
                    if base_model is not None:
                        base = _sliced(base_model(batch.inputs), outs).float()
                        kl_sum += float(F.kl_div(F.log_softmax(logits, 1), F.log_softmax(base, 1),
                                                 reduction="sum", log_target=True))
                    n += len(batch)
        finally:
            model.train(was_training)
        return {
            "eval_task": task,
            "eval_task_name": t.name,
            "accuracy": correct / max(n, 1),
            "loss": loss_sum / max(n, 1),
            "kl_base": kl_sum / max(n, 1) if base_model is not None else float("nan"),
            "n_eval": n,
        }

    def evaluate(self, model: nn.Module, base_model: nn.Module | None = None) -> list[dict]:
        """One row per task of the stream, seen and unseen (unseen ones give forward transfer)."""
        return [self.evaluate_task(model, k, base_model) for k in range(len(self.stream))]
