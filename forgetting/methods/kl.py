"""``kl``: the KL penalty towards a frozen, eval-mode snapshot of the model at the last task boundary.

On the new task's inputs the student's class distribution is held close to the teacher's
(``kl_penalty``), on every output group the teacher knew: each old head in ``task``, the shared
head in ``domain`` (LwF's placement, Li & Hoiem 2016). In ``class``, ``kl_class_outputs``
chooses between two published forms:

- ``active`` (default; van de Ven et al.'s class-incremental LwF, the one their split-MNIST
  figure of 23.9 % measures): the student's softmax over every active output (the classes so
  far, new ones included), the teacher's over the old classes padded with zeros on the new ones
  (``padded_teacher_kl``). Moving probability to the new classes costs penalty.
- ``old``: both softmaxes over the old classes only (LwF's per-head form applied to the old
  block). It is blind to the new classes: a student that copies the teacher's old logits and
  puts +50 on the new ones pays 0. Every direction is defined for it; ``active`` is forward only.

Only the batch's examples of the task being learned are held: composed with ``replay`` (or
``joint``), the examples of older tasks enter the cross-entropy with their labels and not the
KL, as LwF puts its penalty on the new task's inputs; the KL term then means the same as in
``kl`` alone and the teacher cache serves every example it holds. ``kl_on_replayed`` holds them
too (a distillation on the replayed examples as well, with the live teacher).

The teacher is frozen and in eval mode, so where a task's inputs are fixed its outputs on the
task's training set are fixed too: they are computed once at the task boundary (the teacher
cache) and looked up by example index, which makes a KL step cost about as much as a plain one.
"""

from __future__ import annotations

import logging

import torch

from ..options import Option
from ..causal_lm import is_lm, loss_mask, shifted
from ..errors import BadInput
from ..penalty import DIRECTIONS, grouped_kl_penalty, padded_teacher_kl, token_kl_penalty
from ..streams.base import iterate_batches
from .base import Method as Base, Terms

log = logging.getLogger("forgetting")


def teacher_outputs(teacher, data, task: int, batch_size: int, device) -> torch.Tensor:
    """The teacher's logits on every example of ``data``, in index order, float32."""
    chunks = []
    with torch.inference_mode():
        for batch in iterate_batches(data, task, batch_size, shuffle=False):
            chunks.append(teacher(batch.to(device).inputs).float())
    return torch.cat(chunks)


def lm_teacher_outputs(teacher, data, task: int, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal LM teacher's logits at the positions that carry loss of every example of ``data``.

    (flat [positions, vocabulary] float32, offsets [examples + 1]): example i's positions, in
    order, are rows ``offsets[i]:offsets[i + 1]``, the order in which ``logits[loss_mask]``
    lists a batch's positions.
    """
    chunks = []
    with torch.inference_mode():
        for batch in iterate_batches(data, task, batch_size, shuffle=False):
            inputs = batch.to(device).inputs
            logits, _ = shifted(teacher(inputs), inputs["labels"])
            chunks.append(logits[loss_mask(inputs["labels"])].float())
    counts = torch.as_tensor([len(r) for r in data.responses])
    offsets = torch.zeros(len(counts) + 1, dtype=torch.long)
    offsets[1:] = counts.cumsum(0)
    flat = torch.cat(chunks)
    assert flat.shape[0] == int(offsets[-1]), "cached positions do not match the examples' loss tokens"
    return flat, offsets.to(flat.device)


class Method(Base):
    name = "kl"
    options = [
        Option("kl_lambda", float, 1.0, "weight of the KL penalty (0 is plain fine-tuning)", minimum=0.0),
        Option("kl_direction", str, "forward", "forward = KL(p_old || p_new), what F.kl_div(log p_new, p_old) computes; "
               "reverse = KL(p_new || p_old); symmetric = their mean", choices=DIRECTIONS),
        Option("temperature", float, 1.0, "softmax temperature T of the penalty (result scaled by T^2; LwF uses 2)",
               minimum=0.0, exclusive_minimum=True),
        Option("kl_class_outputs", str, "active", "class scenario: active = student softmax over every active class, "
               "teacher's padded with zeros on the new ones (van de Ven et al.'s LwF; forward KL only); old = both "
               "softmaxes over the old classes only (blind to probability moved to new classes)",
               choices=("active", "old")),
        Option("kl_on_replayed", bool, False, "composed with replay or joint: also hold the examples of older tasks "
               "in the batch (the KL then averages over every example, the teacher run live on the batch); default: "
               "the new task's examples only, LwF's placement"),
        Option("teacher_cache", bool, True, "compute the frozen teacher's outputs on a task's training set once at "
               "the task boundary instead of at every step (exact for an eval-mode teacher and fixed inputs; "
               "switched off automatically otherwise); never changes the numbers, so not in the run id", hashed=False),
        Option("teacher_cache_mb", float, 2048.0, "largest teacher cache (examples x outputs x 4 bytes; causal LMs: "
               "tokens that carry loss x vocabulary x 4 bytes); above it the live teacher is used", minimum=0.0,
               hashed=False),
    ]
    strength_option = "kl_lambda"
    naive_at_zero = True  # its only effect is a penalty weighted by the strength

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.cache: torch.Tensor | None = None
        self.cache_task: int | None = None
        self.offsets: torch.Tensor | None = None  # causal LMs: each example's first row in the cache

    def before_task(self, trainer, task: int) -> None:
        self.cache, self.cache_task = None, None
        if task == 0 or self.hparams["kl_lambda"] == 0 or not self.hparams.get("teacher_cache", True):
            return
        reason = self.cache_blocker(trainer)
        data = trainer.stream.tasks[task].train
        lm = is_lm(trainer.stream)
        rows = sum(len(r) for r in data.responses) if lm else len(data)  # LMs: every token that carries loss
        size_mb = rows * trainer.layout.n_outputs * 4 / 2**20
        if reason is None and size_mb > self.hparams["teacher_cache_mb"]:
            reason = f"it would take {size_mb:.1f} MB, above --teacher-cache-mb {self.hparams['teacher_cache_mb']:g}"
        if reason is not None:
            log.info("teacher cache off for task %d: %s; using the live teacher", task, reason)
            return
        if lm:
            size = max(1, min(trainer.config.eval_batch_size,
                              2**24 // (trainer.stream.info["max_seq_len"] * trainer.layout.n_outputs)))
            self.cache, self.offsets = lm_teacher_outputs(trainer.previous_model, data, task, size, trainer.device)
        else:
            self.cache = teacher_outputs(trainer.previous_model, data, task, trainer.config.eval_batch_size,
                                         trainer.device)
        self.cache_task = task
        log.info("teacher cache for task %d: %d %s x %d outputs (%.2f MB)", task, rows,
                 "tokens" if lm else "examples", trainer.layout.n_outputs, size_mb)

    def check_stream(self, stream) -> None:
        if (stream.scenario == "class" and self.hparams.get("kl_class_outputs", "active") == "active"
                and self.hparams["kl_direction"] != "forward"):
            raise BadInput(f"--kl-direction {self.hparams['kl_direction']}: with --kl-class-outputs active (the default "
                           "in the class scenario) only forward is defined, the zero-padded teacher makes the reverse "
                           "KL infinite; allowed: forward, or --kl-class-outputs old")

    @staticmethod
    def cache_blocker(trainer) -> str | None:
        """Why cached teacher outputs would not equal live ones (or cannot be kept), or None."""
        if not trainer.stream.deterministic_inputs:
            return "the stream's training inputs change between visits (augmentation)"
        if trainer.previous_model.training:
            return "the teacher is in train mode (stochastic)"
        return None

    def teacher_logits(self, trainer, batch, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The frozen teacher's logits on the batch (or its ``rows``): from the cache where it holds them, else live."""
        teacher = trainer.previous_model
        assert not teacher.training, "the teacher must be in eval mode"
        index, task_ids = (batch.index, batch.task_ids) if rows is None else \
            (batch.index.index_select(0, rows), batch.task_ids.index_select(0, rows))
        if self.cache is not None:
            cached = (task_ids == self.cache_task) & (index >= 0)
            if bool(cached.all()):
                return self.cache[index]
        with torch.no_grad():
            out = teacher(batch.inputs)
        return out if rows is None else out.index_select(0, rows)

    @staticmethod
    def new_rows(batch, task: int) -> torch.Tensor | None:
        """The rows of the batch from the task being learned; None when that is every row."""
        new = batch.task_ids == task
        if bool(new.all()):
            return None
        return new.nonzero().squeeze(1)

    def penalties(self, trainer, batch, logits, task) -> Terms:
        lam = self.hparams["kl_lambda"]
        if task == 0 or lam == 0:
            return {}
        options = {"direction": self.hparams["kl_direction"], "temperature": self.hparams["temperature"]}
        if is_lm(getattr(trainer, "stream", None)):  # every next-token distribution that carries loss, whole vocabulary
            return {"kl": (self.token_penalty(trainer, batch, logits, options), lam)}
        rows = None if self.hparams.get("kl_on_replayed", False) else self.new_rows(batch, task)
        if rows is not None:  # replayed (or joint) examples of older tasks: not held by the KL
            if len(rows) == 0:
                return {"kl": (logits.new_zeros((), dtype=torch.float32), lam)}
            logits = logits.index_select(0, rows)
        teacher = self.teacher_logits(trainer, batch, rows)
        if trainer.layout.scenario == "class" and self.hparams.get("kl_class_outputs", "active") == "active":
            active, old, positions = self.padded_groups(trainer, task, logits.device)
            student = logits if active is None else logits.index_select(1, active)
            kl = padded_teacher_kl(student, teacher.index_select(1, old), positions,
                                   temperature=self.hparams["temperature"])
            return {"kl": (kl, lam)}
        groups = self.output_groups(trainer, task, logits.device)
        return {"kl": (grouped_kl_penalty(logits, teacher, groups, **options), lam)}

    def token_penalty(self, trainer, batch, logits, options) -> torch.Tensor:
        """A causal LM's penalty: ``token_kl_penalty`` at the positions that carry loss, the teacher's
        logits there from the cache where it holds the whole batch, else from the live teacher."""
        labels = batch.inputs["labels"]
        student, _ = shifted(logits, labels)
        mask = loss_mask(labels)
        if self.cache is not None and bool(((batch.task_ids == self.cache_task) & (batch.index >= 0)).all()):
            start, end = self.offsets[batch.index], self.offsets[batch.index + 1]
            counts = end - start
            rows = torch.repeat_interleave(start - torch.cumsum(counts, 0) + counts, counts) + \
                torch.arange(int(counts.sum()), device=counts.device)
            teacher = self.cache.index_select(0, rows)
            selected = student[mask]
            return token_kl_penalty(selected, teacher, torch.ones(len(teacher), dtype=torch.bool,
                                                                  device=teacher.device), **options)
        teacher = self.teacher_logits(trainer, batch)
        return token_kl_penalty(student, shifted(teacher, labels)[0], mask, **options)

    def output_groups(self, trainer, task: int, device) -> list[torch.Tensor | None]:
        """The penalty's output groups as index tensors, made once per task (None: all outputs)."""
        key = (task, str(device))
        if getattr(self, "_groups_key", None) != key:
            n = trainer.layout.n_outputs
            self._groups = [None if list(outs) == list(range(n)) else torch.as_tensor(outs, device=device)
                            for outs in trainer.layout.penalty_outputs(task)]
            self._groups_key = key
        return self._groups

    def padded_groups(self, trainer, task: int, device) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """``class``, ``active`` form: the student's outputs (None: all), the teacher's old outputs, and their
        positions among the student's; made once per task."""
        key = ("padded", task, str(device))
        if getattr(self, "_padded_key", None) != key:
            layout = trainer.layout
            active = layout.active_outputs(task)
            student = list(range(layout.n_outputs)) if active is None else active
            (old,) = layout.penalty_outputs(task)
            positions = [student.index(o) for o in old]
            self._padded = (None if active is None else torch.as_tensor(active, device=device),
                            torch.as_tensor(old, device=device), torch.as_tensor(positions, device=device))
            self._padded_key = key
        return self._padded

    def after_task(self, trainer, task: int) -> None:
        self.cache, self.cache_task, self.offsets = None, None, None
