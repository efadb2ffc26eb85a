"""The one training loop: task by task, batches -> method hooks -> optimiser -> evaluation."""

from __future__ import annotations

import copy
import math
from collections import defaultdict

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import RunConfig
from .errors import RunFailed
from .causal_lm import is_lm
from .evaluate import Evaluator
from .evaluate_lm import LMEvaluator
from .methods.base import Method
from .streams.base import TaskStream


def freeze(model: nn.Module) -> nn.Module:
    """``model`` itself, in eval mode and without gradients: a teacher."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A snapshot for use as a teacher: a deep copy, frozen (eval mode, no gradients)."""
    return freeze(copy.deepcopy(model))


class Trainer:
    """Trains ``model`` on each task of ``stream`` in turn, calling the methods' hooks.

    Task 0 trains the base model from scratch; task t > 0 fine-tunes it, with
    ``previous_model`` a frozen snapshot taken at the end of task t - 1 and ``base_model`` the
    snapshot after task 0. After every epoch (and every ``eval_every`` steps) every task is
    evaluated and the rows go to ``recorder``.
    """

    def __init__(self, config: RunConfig, stream: TaskStream, model: nn.Module, methods: list[Method],
                 device: torch.device, recorder=None):
        self.config = config
        self.stream = stream
        self.layout = stream.layout
        self.model = model.to(device)
        self.methods = methods
        self.device = device
        self.recorder = recorder
        evaluator = LMEvaluator if is_lm(stream) else Evaluator
        self.evaluator = evaluator(stream, config.eval_batch_size, device, subset=config.eval_subset)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.previous_model: nn.Module | None = None
        self.base_model: nn.Module | None = None
        self.global_step = 0
        self.current_task = 0  # the task being trained (its active outputs in ``class``)
        self.optimizer: torch.optim.Optimizer | None = None
        self.method_name = "+".join(m.name for m in methods)
        self.strength = next((m.strength() for m in methods if m.strength_option), 0.0)
        loss_changers = [m for m in methods if m.changes_task_loss]
        self._loss_method = loss_changers[0] if loss_changers else methods[0]
        data_changers = [m for m in methods if m.changes_batches]
        self._data_method = data_changers[0] if data_changers else methods[0]

    # --- the loop ---------------------------------------------------------------------------
    def fit(self, start_task: int = 0) -> None:
        if start_task == 0:
            self.record("init", -1, 0, float("nan"))
        for t in range(start_task, len(self.stream)):
            self.train_task(t)

    def new_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.config.lr)

    def train_task(self, t: int) -> None:
        self.current_task = t
        self.optimizer = self.new_optimizer()
        for m in self.methods:
            m.before_task(self, t)
        task = self.stream.tasks[t]
        steps_per_epoch = math.ceil(len(task.train) / self.config.batch_size)
        bar = tqdm(total=steps_per_epoch * self.config.epochs, desc=f"task {t} {task.name}", leave=False,
                   disable=not self.config.progress, dynamic_ncols=True)
        for epoch in range(1, self.config.epochs + 1):
            sums: dict[str, float] = defaultdict(float)
            n_batches = 0
            for batch in self._data_method.batches(self, t, epoch):
                parts = self.step(batch.to(self.device), t, epoch)
                for k, v in parts.items():
                    sums[k] += v
                n_batches += 1
                bar.update(1)
                bar.set_postfix(loss=f"{parts['loss']:.3f}", refresh=False)
                if self.config.eval_every and self.global_step % self.config.eval_every == 0:
                    self.record("step", t, epoch, sums["loss"] / n_batches)
            self.record("epoch", t, epoch, sums["loss"] / max(n_batches, 1))
        bar.close()
        for m in self.methods:
            m.after_task(self, t)
        self.snapshot_boundary(t)
        if self.recorder is not None:
            self.recorder.task_done(self, t)

    def snapshot_boundary(self, t: int) -> None:
        """The references at the end of task ``t``: ``previous_model`` (and after task 0 ``base_model``).

        A frozen copy of the model; or, for a model that keeps its own reference (LoRA: the
        adapters are merged and new ones started, the reference is the model with its adapters
        disabled), that reference, with a copy kept only of the base model.
        """
        boundary = getattr(self.model, "task_boundary", None)
        if boundary is not None and getattr(self.model, "lora", None):
            if t == 0:
                self.base_model = frozen_copy(self.model)
            self.previous_model = boundary(t)
            return
        self.previous_model = frozen_copy(self.model)
        if t == 0:
            self.base_model = self.previous_model

    def step(self, batch, t: int, epoch: int) -> dict[str, float]:
        """One optimisation step: task loss + weighted penalties, backward, optimiser step."""
        self.model.train()
        logits, data_loss, terms = self._loss_method.task_loss(self, batch)
        for m in self.methods:
            terms.update(m.penalties(self, batch, logits, t))
        total = data_loss
        for value, weight in terms.values():
            total = total + weight * value
        if not torch.isfinite(total.detach()):
            value = float(total.detach())
            raise RunFailed(f"non-finite loss ({value}) at task {t} ({self.stream.tasks[t].name}), "
                            f"epoch {epoch}, step {self.global_step + 1}",
                            task=t, epoch=epoch, step=self.global_step + 1, loss=value)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        for m in self.methods:
            m.after_backward(self, t)
        self.optimizer.step()
        self.global_step += 1
        for m in self.methods:
            m.after_step(self, t)
        parts = {"loss": float(total.detach()), "data_loss": float(data_loss.detach())}
        parts.update({k: float(v.detach()) for k, (v, _) in terms.items()})
        return parts

    # --- evaluation -------------------------------------------------------------------------
    def record(self, phase: str, t: int, epoch: int, train_loss: float) -> list[dict]:
        rows = self.evaluator.evaluate(self.model, self.base_model, trained_task=t)
        ctx = {
            "run_id": self.config.run_id, "benchmark": self.stream.name, "scenario": self.stream.scenario,
            "method": self.method_name, "lambda": self.strength, "seed": self.config.seed, "phase": phase,
            "trained_task": t, "epoch": epoch, "global_step": self.global_step, "train_loss": train_loss,
        }
        rows = [{**ctx, **r} for r in rows]
        if self.recorder is not None:
            for r in rows:
                r["wall_time"] = self.recorder.elapsed()
            self.recorder.add_rows(rows)
        return rows
