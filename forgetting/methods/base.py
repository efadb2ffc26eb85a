"""The shape every method has: a few hooks the training loop calls.

A method holds fine-tuning back by one or more of: changing the loss of a batch
(``task_loss``: R-Drop's two passes), adding penalty terms (``penalties``: KL, EWC, ...),
changing what data a task trains on (``batches``: replay, joint), and keeping state across
task boundaries (``before_task`` / ``after_task``), which ``state_dict`` hands to the task-boundary
checkpoint and ``load_state_dict`` takes back on resumption. Methods compose with ``+`` (``kl+rdrop``):
the loop calls every part's hooks; at most one part may change the task loss and at most
one the data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Iterator

from torch import Tensor

from ..options import Option
from ..streams.base import Batch, iterate_batches

if TYPE_CHECKING:  # pragma: no cover
    from ..train import Trainer

Terms = dict[str, tuple[Tensor, float]]  # name -> (unweighted value, weight in the total loss)


def masked_cross_entropy(trainer: "Trainer", logits: Tensor, batch: Batch) -> Tensor:
    """The data loss of the run's objective while the current task trains: for classifiers the cross-entropy
    over the outputs each example may predict (its own head in ``task``; every output in ``domain``; in
    ``class`` the outputs of the tasks seen so far, or all of them); for causal LMs the mean next-token
    cross-entropy over the tokens that carry loss."""
    return trainer.objective.data_loss(logits, batch, trainer.current_task)


class Method:
    """Plain fine-tuning: cross-entropy on the current task, no penalty, no memory."""

    name: ClassVar[str] = "naive"
    options: ClassVar[list[Option]] = []
    strength_option: ClassVar[str | None] = None  # the hyper-parameter reported as "lambda"
    naive_at_zero: ClassVar[bool] = False  # a strength of 0 makes the method plain fine-tuning (reports call it naive)
    changes_task_loss: ClassVar[bool] = False
    changes_batches: ClassVar[bool] = False
    runner: ClassVar[str] = "forgetting"  # the loop that runs it (registry.RUNNERS): our Trainer
    # What it needs of the run's objective (objectives.Objective.provides), e.g. {"class_distribution"}, and why;
    # registry.resolve refuses it in one line where the objective does not give it.
    needs: ClassVar[frozenset[str]] = frozenset()
    needs_why: ClassVar[str] = ""
    anchors_weights: ClassVar[bool] = False  # pulls the trainable weights to old values (not for LoRA's fresh adapters)

    def __init__(self, **hparams):
        self.hparams = hparams

    def check_stream(self, stream) -> None:
        """BadInput where the method's options cannot work on ``stream`` (called before any file is written)."""

    # --- hooks, in the order the loop calls them -------------------------------------------
    def before_task(self, trainer: "Trainer", task: int) -> None:
        """Called before training on ``task`` starts (``trainer.previous_model`` is set when task > 0)."""

    def batches(self, trainer: "Trainer", task: int, epoch: int) -> Iterator[Batch]:
        """The training batches of one epoch: by default the current task's training set, shuffled."""
        t = trainer.stream.tasks[task]
        return iterate_batches(t.train, task, trainer.config.batch_size, shuffle=True, generator=trainer.generator)

    def task_loss(self, trainer: "Trainer", batch: Batch) -> tuple[Tensor, Tensor, Terms]:
        """Student logits, the data loss, and extra terms: one forward pass and cross-entropy."""
        logits = trainer.model(batch.inputs)
        return logits, masked_cross_entropy(trainer, logits, batch), {}

    def penalties(self, trainer: "Trainer", batch: Batch, logits: Tensor, task: int) -> Terms:
        """Penalty terms for this batch given the student's logits."""
        return {}

    def after_backward(self, trainer: "Trainer", task: int) -> None:
        """Gradients of the total loss are in ``.grad``; the optimiser has not stepped yet."""

    def after_step(self, trainer: "Trainer", task: int) -> None:
        """The optimiser has stepped."""

    def after_task(self, trainer: "Trainer", task: int) -> None:
        """Training on ``task`` has ended (the model is the one that will be evaluated)."""

    # --- what a task-boundary checkpoint keeps -----------------------------------------------
    def state_dict(self) -> dict:
        """What this method carries from one task into the next (tensors, numbers, lists, dicts).

        Saved after ``after_task``; a run resumed from it must give the rows an uninterrupted
        one gives. State rebuilt in ``before_task`` (caches, running sums of the current task)
        is not part of it.
        """
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Take back what ``state_dict`` gave (on a fresh method built from the same hyper-parameters)."""
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, got {sorted(state)}")

    # --- reporting --------------------------------------------------------------------------
    def strength(self) -> float:
        return float(self.hparams[self.strength_option]) if self.strength_option else 0.0


class Naive(Method):
    name = "naive"
