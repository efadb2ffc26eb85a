"""The frozen teacher: a snapshot in eval mode without gradients, and what a run keeps of it.

``freeze`` / ``frozen_copy`` make a teacher (the loop, checkpoints and the Hugging Face, TRL and
Avalanche bridges all use them); ``boundary_references`` takes the references at a task boundary;
``TeacherCache`` holds a teacher's outputs on a task's training set, computed once by the
run's objective (exact for an eval-mode teacher on fixed inputs).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import Tensor, nn


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


def keeps_own_reference(model: nn.Module) -> bool:
    """Whether ``model`` keeps its own reference (the protocol: a ``keeps_own_reference`` attribute that is
    true, and ``task_boundary(task) -> reference``): LoRA, whose reference is the model with its adapters
    disabled."""
    return bool(getattr(model, "keeps_own_reference", False))


def boundary_references(model: nn.Module, task: int, base_model: nn.Module | None):
    """(previous_model, base_model) at the end of ``task``: a frozen copy of the model (after task 0 both);
    for a model that keeps its own reference, that reference, with a copy kept only of the base model."""
    if keeps_own_reference(model):
        if task == 0:
            base_model = frozen_copy(model)
        return model.task_boundary(task), base_model
    previous = frozen_copy(model)
    return previous, (previous if task == 0 else base_model)


@dataclass
class TeacherCache:
    """A frozen teacher's outputs on task ``task``'s training examples, in the layout its objective chose
    (``offsets``: where each example's rows start, for objectives with several rows per example)."""

    task: int
    outputs: Tensor
    offsets: Tensor | None = None

    def holds(self, task_ids: Tensor, index: Tensor) -> bool:
        """Whether every example (``task_ids``, ``index``) is in the cache."""
        return bool(((task_ids == self.task) & (index >= 0)).all())


__all__ = ["TeacherCache", "boundary_references", "freeze", "frozen_copy", "keeps_own_reference"]
