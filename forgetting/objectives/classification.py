"""``classification``: one class distribution per example over the outputs a head layout makes active.

The data loss is the cross-entropy over the outputs each example may predict while the current
task trains (its own head in ``task``; every output in ``domain``; in ``class`` the outputs of the
tasks seen so far, ``--class-outputs seen``, or all of them). The KL penalty compares the
teacher's and the student's class distributions per example on every output group the teacher
knew (each old head in ``task``, the shared head in ``domain``: LwF's placement); in ``class``
the ``active`` form compares the student's softmax over the active outputs with the teacher's
padded with zeros on the new ones (van de Ven et al.'s LwF), the ``old`` form both softmaxes over
the old outputs only (see ``methods/kl.py``). By default only the examples of the task being
learned are held (LwF puts its penalty on the new task's inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..evaluate import Evaluator
from ..oracle import oracle_targets, soft_cross_entropy
from ..penalty import grouped_kl_penalty, padded_teacher_kl
from ..policy_gradient import sample_answers
from ..streams.base import iterate_batches
from ..teacher import TeacherCache
from . import Objective


def new_rows(batch, task: int) -> Tensor | None:
    """The rows of the batch from the task being learned; None when that is every row."""
    new = batch.task_ids == task
    if bool(new.all()):
        return None
    return new.nonzero().squeeze(1)


def teacher_outputs(teacher, data, task: int, batch_size: int, device, world=None) -> Tensor:
    """The teacher's logits on every example of ``data``, in index order, float32 (under a launcher each rank
    runs its part of the examples and every rank gets all the rows)."""
    parts = world is not None and world.distributed  # ``distributed.World``, passed down by the loop
    index = world.part(torch.arange(len(data))) if parts else None
    chunks = []
    with torch.inference_mode():
        if index is not None and len(index) == 0:  # fewer examples than ranks: a width, no rows
            chunks.append(teacher(next(iterate_batches(data, task, 1, shuffle=False)).to(device).inputs).float()[:0])
        for batch in iterate_batches(data, task, batch_size, shuffle=False, index=index, views=True):
            chunks.append(teacher(batch.to(device).inputs).float())
    return world.gather_rows(torch.cat(chunks)) if parts else torch.cat(chunks)


class Classification(Objective):
    name = "classification"
    label = "classifiers"
    provides = frozenset({"class_distribution", "answer_sampling", "oracle_targets"})

    def __init__(self, layout, info=None):
        super().__init__(layout, info)
        self._groups_key = self._padded_key = None

    def data_loss(self, logits, batch, task):
        return F.cross_entropy(self.layout.masked(logits, batch.task_ids, task), batch.targets)

    # --- the penalty ------------------------------------------------------------------------
    def penalty_kl(self, logits, batch, task, teacher, cache, *, direction, temperature, class_outputs="active",
                   on_replayed=False, **_):
        rows = None if on_replayed else new_rows(batch, task)
        if rows is not None:  # replayed (or joint) examples of older tasks: not held by the KL
            if len(rows) == 0:
                return logits.new_zeros((), dtype=torch.float32)
            logits = logits.index_select(0, rows)
        teacher_logits = self.teacher_logits(batch, rows, teacher, cache)
        if self.layout.scenario == "class" and class_outputs == "active":
            active, old, positions = self.padded_groups(task, logits.device)
            student = logits if active is None else logits.index_select(1, active)
            return padded_teacher_kl(student, teacher_logits.index_select(1, old), positions, temperature=temperature)
        groups = self.output_groups(task, logits.device)
        return grouped_kl_penalty(logits, teacher_logits, groups, direction=direction, temperature=temperature)

    @staticmethod
    def teacher_logits(batch, rows, teacher, cache: TeacherCache | None) -> Tensor:
        """The teacher's logits on the batch (or its ``rows``): from the cache where it holds them, else live."""
        index, task_ids = (batch.index, batch.task_ids) if rows is None else \
            (batch.index.index_select(0, rows), batch.task_ids.index_select(0, rows))
        if cache is not None and cache.holds(task_ids, index):
            return cache.outputs[index]
        out = teacher(batch)
        return out if rows is None else out.index_select(0, rows)

    def output_groups(self, task: int, device) -> list[Tensor | None]:
        """The penalty's output groups as index tensors, made once per task (None: all outputs)."""
        key = (task, str(device))
        if self._groups_key != key:
            n = self.layout.n_outputs
            self._groups = [None if list(outs) == list(range(n)) else torch.as_tensor(outs, device=device)
                            for outs in self.layout.penalty_outputs(task)]
            self._groups_key = key
        return self._groups

    def padded_groups(self, task: int, device) -> tuple[Tensor | None, Tensor, Tensor]:
        """``class``, ``active`` form: the student's outputs (None: all), the teacher's old outputs, and their
        positions among the student's; made once per task."""
        key = (task, str(device))
        if self._padded_key != key:
            layout = self.layout
            active = layout.active_outputs(task)
            student = list(range(layout.n_outputs)) if active is None else active
            (old,) = layout.penalty_outputs(task)
            positions = [student.index(o) for o in old]
            self._padded = (None if active is None else torch.as_tensor(active, device=device),
                            torch.as_tensor(old, device=device), torch.as_tensor(positions, device=device))
            self._padded_key = key
        return self._padded

    def teacher_cache(self, teacher, data, task, batch_size, device, world=None):
        return TeacherCache(task, teacher_outputs(teacher, data, task, batch_size, device, world))

    # --- EWC's Fisher -------------------------------------------------------------------------
    def fisher_terms(self, model, task, labels, device):
        """log p(y|x) over the outputs the task trains with; y each class weighted by the model's probability
        (``true``, the expectation) or the label (``empirical``)."""
        outs = self.layout.mask(torch.tensor([task], device=device), task)[0].nonzero().squeeze(1)
        position = torch.full((self.layout.n_outputs,), -1, dtype=torch.long, device=device)
        position[outs] = torch.arange(len(outs), device=device)

        def nll(logits: Tensor, y: Tensor) -> Tensor:
            return -F.log_softmax(logits[:, outs].float(), dim=1).gather(1, y[:, None]).squeeze(1)

        def terms(batch):
            if labels == "empirical":
                return [(position[batch.targets], nll, "square", None)]
            with torch.no_grad():  # the expectation under the model's own prediction (eval mode: see mean_grad_sums)
                probs = F.softmax(model(batch.inputs)[:, outs].float(), dim=1)
            return [(torch.full_like(batch.targets, c), nll, "square", probs[:, c]) for c in range(len(outs))]

        return terms

    # --- on-policy fine-tuning ----------------------------------------------------------------
    def sample_answers(self, model, batch, task, groups, generator, *, temperature, max_new_tokens, log_probs=False):
        """A class per draw from the softmax over the outputs each example may predict (its head, the active ones)."""
        logits = model(batch.inputs)
        answers = sample_answers(logits, groups, generator, allowed=self.layout.mask(batch.task_ids, task),
                                 temperature=temperature)
        return answers, (self.class_log_probs(logits, batch, task, answers, temperature) if log_probs else None)

    def answer_log_probs(self, model, batch, task, answers, *, temperature):
        logits = model(batch.inputs)
        return logits, self.class_log_probs(logits, batch, task, answers, temperature), None

    def class_log_probs(self, logits, batch, task, answers, temperature):
        masked = self.layout.masked(logits, batch.task_ids, task).float() / temperature
        return F.log_softmax(masked, dim=1).gather(1, answers)

    def correct(self, answers, batch, stream):
        """The answer is the target, or (a task with ``answers``: a table [targets, outputs]) in the target's set."""
        return self.correct_sets(batch, stream).gather(1, answers)

    def correct_sets(self, batch, stream) -> Tensor:
        """Bool [n, outputs]: each example's correct answers, its task's answer set for its target (``Task.answers``,
        a table [targets, outputs]) or else its target alone."""
        right = F.one_hot(batch.targets, self.layout.n_outputs).bool()
        for t in batch.task_ids.unique().tolist():
            table = getattr(stream.tasks[t], "answers", None)
            if table is None:
                continue
            rows = (batch.task_ids == t).nonzero().squeeze(1)
            right[rows] = table.to(right.device)[batch.targets[rows]]
        return right

    # --- oracle SFT (``--sft-targets oracle``, oracle.py) ---------------------------------------
    def oracle_loss(self, logits, batch, task, reference, stream):
        """Cross-entropy of the student's distribution (over the outputs each example may predict) against the
        frozen ``reference``'s, restricted to the example's correct answers and renormalised (no gradient to it)."""
        with torch.no_grad():
            ref = self.layout.masked(reference(batch.inputs).float(), batch.task_ids, task)
        student = self.layout.masked(logits.float(), batch.task_ids, task)
        correct = self.correct_sets(batch, stream) & torch.isfinite(student)
        return soft_cross_entropy(student, oracle_targets(ref, correct))

    def evaluator(self, stream, batch_size, device, subset=0):
        return Evaluator(stream, batch_size, device, subset=subset)
