"""Shared by the weight-penalty methods (ewc, ewc-online, si, mas, l2sp): per-parameter tensors.

Importances are dicts from a trainable parameter's name to a tensor of its shape. Per-example
gradients come from ``torch.func`` (``vmap`` over ``grad`` of a one-example loss), the exact
quantity the papers define (a gradient of a batch mean, squared, is a different one).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from ..streams.base import TaskData, iterate_batches

Params = dict[str, Tensor]

# Floats of per-example gradients held at once (128 MiB): sets how many examples one vmap call takes.
GRAD_BUDGET = 2**25


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model: nn.Module) -> Params:
    """Detached copies of the trainable parameters (an anchor the penalty pulls towards)."""
    return {n: p.detach().clone() for n, p in trainable(model).items()}


def zeros_like(params: Params) -> Params:
    return {n: torch.zeros_like(p) for n, p in params.items()}


def weighted_sq_distance(model: nn.Module, anchor: Params, weight: Params | None = None) -> Tensor:
    """sum_i w_i (theta_i - anchor_i)^2 over the trainable parameters (w = 1 when ``weight`` is None)."""
    terms = []
    for n, p in trainable(model).items():
        d = p.float() - anchor[n].float()
        terms.append((d * d).sum() if weight is None else (weight[n].float() * d * d).sum())
    return torch.stack(terms).sum()


def allowed_outputs(layout, task: int, device) -> Tensor:
    """The output indices task ``task`` trains with (its head in ``task``, every output otherwise)."""
    return layout.mask(torch.tensor([task], device=device))[0].nonzero().squeeze(1)


def per_example_grads(model: nn.Module, inputs, extra: Tensor, fn: Callable[[Tensor, Tensor], Tensor]) -> Params:
    """Gradient of ``fn(logits of example i, extra[i])`` for every example i: tensors [n, *shape].

    The model runs as it is (callers put it in eval mode: no dropout, frozen batch-norm).
    """
    params = {n: p.detach() for n, p in trainable(model).items()}

    def one(p, x, e):
        logits = functional_call(model, p, (tree_map(lambda t: t.unsqueeze(0), x),))
        return fn(logits[0], e)

    return vmap(grad(one), in_dims=(None, 0, 0))(params, inputs, extra)


def example_chunks(model: nn.Module, data: TaskData, task: int, device) -> Iterator:
    """Batches of a task's training examples sized so their per-example gradients fit GRAD_BUDGET."""
    n_params = sum(p.numel() for p in trainable(model).values())
    size = max(1, GRAD_BUDGET // max(n_params, 1))
    for batch in iterate_batches(data, task, size, shuffle=False):
        yield batch.to(device)


class eval_mode:
    """Context manager: the model in eval mode inside, its previous mode restored after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)
