"""The one training loop: task by task, batches -> method hooks -> optimiser -> evaluation."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from . import progress
from .distributed import SINGLE, take
from .fsdp import full
from .config import RunConfig
from .errors import RunFailed
from .methods.base import Method
from .objectives import objective_for
from . import optim
from .onpolicy import pg_task_loss
from .streams.base import TaskStream, gather_examples
from .teacher import boundary_references, freeze, frozen_copy  # noqa: F401  (the teacher helpers, also from here)


PREVIEW_SEED = 0  # the draw of task 1's examples that --base-preview adds to the base task (the same in every run)


class Trainer:
    """Trains ``model`` on each task of ``stream`` in turn, calling the methods' hooks.

    Task 0 trains the base model from scratch; task t > 0 fine-tunes it, with
    ``previous_model`` a frozen snapshot taken at the end of task t - 1 and ``base_model`` the
    snapshot after task 0. After every epoch (and every ``eval_every`` steps) every task is
    evaluated and the rows go to ``recorder``.

    ``world`` (``distributed.World``; set by ``running`` under a launcher): this process's rank. Every rank
    draws the same global batches and trains on its shard of each; gradients and the reported losses are
    summed over the ranks with each rank's share of the batch as weight; every rank evaluates its part of the
    test sets (the evaluator gathers the results) and rank 0 alone records.
    """

    _world = SINGLE
    sharding = None  # ``fsdp.Sharding`` when the launch selects FSDP (set by ``running``): the live model is sharded

    @property
    def world(self):
        return self._world

    @world.setter
    def world(self, world) -> None:
        self._world = world
        self.evaluator.world = world  # the evaluator shards the test sets over the same ranks

    def __init__(self, config: RunConfig, stream: TaskStream, model: nn.Module, methods: list[Method],
                 device: torch.device, recorder=None):
        self.config = config
        self.stream = stream
        self.layout = stream.layout
        self.model = model.to(device)
        self.methods = methods
        self.device = device
        self.recorder = recorder
        self.objective = objective_for(stream)  # what the model predicts: data loss, penalties' distributions, measures
        self.evaluator = self.objective.evaluator(stream, config.eval_batch_size, device, subset=config.eval_subset)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.previous_model: nn.Module | None = None
        self.base_model: nn.Module | None = None
        self.global_step = 0
        self.current_task = 0  # the task being trained (its active outputs in ``class``)
        # --stop-at-accuracy: per fine-tuning task, where it ended (the manifest's ``stopped_at``)
        self.stops: dict[int, dict] = {}
        self._task_start_step = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None  # per-epoch learning-rate schedule (optim.py), fresh per task
        optim.check_device(config.amp, device)
        self.scaler = optim.grad_scaler(device, config.amp)
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
        for t in range(start_task, self.stream.n_learned):  # evaluation-only tasks: measured, never trained
            self.train_task(t)

    def new_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser of the loop options (Adam by default), over the trainable parameters."""
        return optim.build_optimizer((p for p in self.model.parameters() if p.requires_grad), self.config,
                                     self.current_task)

    def train_task(self, t: int) -> None:
        if t == 0 and not self.config.train_base:
            return self.keep_base()
        self.current_task = t
        self.optimizer = self.new_optimizer()
        self.scheduler = optim.build_scheduler(self.optimizer, self.config)
        for m in self.methods:
            m.before_task(self, t)
        task = self.stream.tasks[t]
        steps_per_epoch = math.ceil(len(task.train) / self.config.batch_size)
        show = self.config.progress and self.world.main
        bar = progress.bar(steps_per_epoch * self.config.epochs, f"task {t} {task.name}", show)
        self._task_start_step = self.global_step
        for epoch in range(1, self.config.epochs + 1):
            sums: dict[str, float] = defaultdict(float)
            n_batches = 0
            self.model.train()  # every submodule; a step re-sets it only where something left the model in eval
            batches = (self.preview_batches() if t == 0 and self.config.base_preview
                       else self._data_method.batches(self, t, epoch))
            for batch in batches:
                parts = self.step(batch.to(self.device), t, epoch)
                for k, v in parts.items():
                    sums[k] += v
                n_batches += 1
                if show:
                    bar.update(1)
                    bar.set_postfix(loss=f"{parts['loss']:.3f}", refresh=False)
                if self.recorder is not None:
                    self.recorder.add_losses(self.global_step, parts)
                if self.config.eval_every and self.global_step % self.config.eval_every == 0:
                    self.record("step", t, epoch, sums["loss"] / n_batches)
                    if self.stopped(t):  # its rows were written as the task's end (phase "epoch")
                        break
            if self.stopped(t):
                break
            if self.scheduler is not None:
                self.scheduler.step()
            self.record("epoch", t, epoch, sums["loss"] / max(n_batches, 1))
            if self.stopped(t):
                break
        bar.close()
        for m in self.methods:
            m.after_task(self, t)
        self.snapshot_boundary(t)
        if self.recorder is not None:
            self.recorder.task_done(self, t)

    def stopped(self, t: int) -> bool:
        """Whether task ``t`` reached ``--stop-at-accuracy`` (its end is due now)."""
        return self.stops.get(t, {}).get("reached", False)

    def check_stop(self, rows: list[dict], phase: str, t: int, epoch: int) -> bool:
        """``--stop-at-accuracy A``: whether the evaluation ``rows`` of fine-tuning task ``t`` end it, i.e. its own
        test accuracy (the row of eval_task t) is at least A. Every rank decides alike (the rows are gathered on
        every rank). Keeps ``stops[t]``: where the task ended, or its last evaluation while A is not reached."""
        target = self.config.stop_at_accuracy
        if not target or t < 1 or phase == "init":
            return False
        acc = next((float(r["accuracy"]) for r in rows if r["eval_task"] == t and "accuracy" in r), float("nan"))
        reached = acc >= target
        if reached or phase == "epoch":
            self.stops[t] = {"reached": reached, "phase": phase, "epoch": epoch, "global_step": self.global_step,
                             "steps": self.global_step - self._task_start_step, "accuracy": acc}
        return reached

    def preview_batches(self):
        """``--base-preview N``: task 0's training set and N examples of task 1 (a fixed draw), shuffled together;
        task 1's examples keep their task id (their own head) and index -1 (no teacher cache holds them)."""
        first, second = self.stream.tasks[0].train, self.stream.tasks[1].train
        n = min(self.config.base_preview, len(second))
        preview = torch.randperm(len(second), generator=torch.Generator().manual_seed(PREVIEW_SEED))[:n]
        task_ids = torch.cat([torch.zeros(len(first), dtype=torch.long), torch.ones(n, dtype=torch.long)])
        index = torch.cat([torch.arange(len(first)), preview])
        order = torch.randperm(len(task_ids), generator=self.generator)
        for start in range(0, len(order), self.config.batch_size):
            sel = order[start : start + self.config.batch_size]
            batch = gather_examples([first, second], task_ids[sel], index[sel])
            batch.index = torch.where(batch.task_ids == 0, batch.index, torch.full_like(batch.index, -1))
            yield batch

    def keep_base(self) -> None:
        """``--no-train-base``: the model as loaded is the base. Task 0's boundary without a step: the methods'
        hooks (a replay buffer, EWC's Fisher on task 0), its evaluation as "after task 0" (at the last epoch, so
        every reader finds it), the references and the checkpoint."""
        self.current_task = 0
        for m in self.methods:
            m.before_task(self, 0)
        self.record("epoch", 0, self.config.epochs, float("nan"))
        for m in self.methods:
            m.after_task(self, 0)
        self.snapshot_boundary(0)
        if self.recorder is not None:
            self.recorder.task_done(self, 0)

    def snapshot_boundary(self, t: int) -> None:
        """The references at the end of task ``t``: ``previous_model`` (and after task 0 ``base_model``).

        A frozen copy of the model; or, for a model that keeps its own reference (LoRA: the
        adapters are merged and new ones started, the reference is the model with its adapters
        disabled), that reference, with a copy kept only of the base model.
        """
        self.previous_model, self.base_model = boundary_references(self.whole_model(), t, self.base_model)

    def whole_model(self, weights: dict | None = None) -> nn.Module:
        """The live model, or under FSDP a whole copy of it (its gathered weights, or ``weights``: every rank
        calls this, a gather is a collective) -- what references are copied from."""
        if self.sharding is None:
            return self.model
        return self.sharding.whole(self.sharding.gather() if weights is None else weights)

    def load_weights(self, weights: dict) -> None:
        """Whole ``weights`` into the live model (under FSDP each rank keeps its shard of them)."""
        if self.sharding is None:
            self.model.load_state_dict(weights)
        else:
            self.sharding.load(weights)

    def whole_state_dict(self) -> dict:
        """The live model's weights as one process holds them (what a checkpoint saves): under FSDP the weights
        gathered at the last boundary (or read at a resume), held by the sharding's whole template."""
        if self.sharding is None:
            return self.model.state_dict()
        return self.sharding.template.state_dict()

    def step(self, batch, t: int, epoch: int) -> dict[str, float]:
        """One optimisation step: task loss + weighted penalties, backward, optimiser step.

        Under a launcher ``batch`` is the global batch: this rank keeps its shard and its loss enters
        weighted by its share of the batch's loss units (``_share``)."""
        if not self.model.training:  # evaluation and the hooks restore the mode they found (``train_task`` sets it)
            self.model.train()
        logs = {}
        batch, share = self._share(batch)
        with optim.autocast(self.device, self.config.amp):  # the student's pass only: penalties stay fp32
            if self.config.objective == "pg" and t > 0:  # the base task is learned from its targets
                logits, data_loss, logs = pg_task_loss(self, batch)
                terms = {}
            elif self.config.sft_targets == "oracle" and t > 0:  # the reference restricted to the correct answers
                logits = self.model(batch.inputs)
                data_loss = self.objective.oracle_loss(logits, batch, t, self.previous_model, self.stream)
                terms = {}
            else:
                logits, data_loss, terms = self._loss_method.task_loss(self, batch)
        if self.config.amp != "off":
            logits, data_loss = logits.float(), data_loss.float()
        for m in self.methods:
            terms.update(m.penalties(self, batch, logits, t))
        total = data_loss
        for value, weight in terms.values():
            total = total + weight * value
        loss = float(total.detach())
        parts = {"loss": loss, "data_loss": loss if total is data_loss else float(data_loss.detach())}
        parts.update({k: float(v.detach()) for k, (v, _) in terms.items()})
        parts.update({k: float(v) for k, v in logs.items()})  # pg's reward_mean, reward_std, pg_loss
        if self.world.distributed:  # every rank reports (and checks) the global batch's losses
            names = list(parts)
            parts = dict(zip(names, self.world.sum_floats([share * parts[k] for k in names], self.device)))
        if not math.isfinite(parts["loss"]):
            value = parts["loss"]
            raise RunFailed(f"non-finite loss ({value}) at task {t} ({self.stream.tasks[t].name}), "
                            f"epoch {epoch}, step {self.global_step + 1}",
                            task=t, epoch=epoch, step=self.global_step + 1, loss=value)
        self.optimizer.zero_grad(set_to_none=True)
        scaled = total if share == 1.0 else total * share
        if self.scaler is None:
            scaled.backward()
        else:  # fp16: scaled loss, gradients unscaled before the hooks and clipping see them
            self.scaler.scale(scaled).backward()
        if self.world.distributed and self.sharding is None:  # one process pays nothing; FSDP reduced them
            self.world.reduce_grads([p for p in self.model.parameters() if p.requires_grad])
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        for m in self.methods:
            m.after_backward(self, t)
        optim.clip(self.model, self.config.grad_clip)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.global_step += 1
        for m in self.methods:
            m.after_step(self, t)
        return parts

    def _share(self, batch):
        """(this rank's part of the batch, its share of the batch's loss units); (batch, 1.0) in one process."""
        if not self.world.distributed:
            return batch, 1.0
        units = self.objective.loss_units(batch)
        mine = self.world.shard(batch)
        share = self.objective.loss_units(mine) / units if units else 0.0
        if share == 0:  # nothing of this batch here (its last few examples): a pass on one example, weighted 0
            return take(batch, torch.zeros(1, dtype=torch.long)), 0.0
        return mine, share

    # --- evaluation -------------------------------------------------------------------------
    def record(self, phase: str, t: int, epoch: int, train_loss: float) -> list[dict]:
        rows = self.evaluator.evaluate(self.model, self.base_model, trained_task=t)  # every rank: its part, gathered
        stop = self.check_stop(rows, phase, t, epoch)
        if stop:  # the task ends here: these are its end-of-task rows, at the epoch the stop fell in
            phase = "epoch"
        change = None
        if self.base_model is not None and (self.world.main or self.sharding is not None):  # FSDP: all gather
            change = self.weight_change()
        if not self.world.main:  # the rows are rank 0's to write
            return []
        boundary = phase == "init" or (phase == "epoch" and (epoch == self.config.epochs or stop))
        if hasattr(self.evaluator, "boundary_rows") and (boundary or getattr(self.evaluator, "rows_at_every_evaluation",
                                                                            False)):  # e.g. lm-eval's tasks (causal LMs)
            rows = rows + self.evaluator.boundary_rows(self.model)
        if self.base_model is not None:  # the weights' distance from the base, a candidate predictor of forgetting
            rows = [{**r, "weight_change": change} for r in rows] if rows else rows
        ctx = {
            "run_id": self.config.run_id, "benchmark": self.stream.name, "scenario": self.stream.scenario,
            "method": self.method_name, "lambda": self.strength, "seed": self.config.seed, "phase": phase,
            "trained_task": t, "epoch": epoch, "global_step": self.global_step, "train_loss": train_loss,
        }
        rows = [{**ctx, **r} for r in rows]
        for r in rows:
            if self.stream.n_learned <= r["eval_task"] < len(self.stream):
                r["eval_only"] = 1
        if self.recorder is not None:
            for r in rows:
                r["wall_time"] = self.recorder.elapsed()
            self.recorder.add_rows(rows)
        return rows

    def weight_change(self) -> float:
        """‖θ − θ_base‖₂ over the parameters the live model and the base snapshot share by name and shape (NaN
        where they share none, e.g. a LoRA model whose base copy is the merged model). The squares are summed in
        float64 by numpy (pairwise, on one thread): torch's sum splits a large tensor by the number of threads, so
        a run resumed in a process with other threads would write other last digits."""
        if getattr(self, "_base_params_of", None) is not self.base_model:
            self._base_params_of = self.base_model
            self._base_params = dict(self.base_model.named_parameters())
        total, shared = 0.0, 0
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                q = self._base_params.get(name)
                if q is not None and q.shape == p.shape:
                    p = full(p)  # under FSDP the whole parameter (every rank gathers it)
                    d = (p.detach().float() - q.detach().float().to(p.device)).double().cpu().numpy()
                    total += float(np.square(d).sum())
                    shared += 1
        return math.sqrt(total) if shared else float("nan")
