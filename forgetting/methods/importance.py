"""Shared by the weight-penalty methods (ewc, ewc-online, si, mas, l2sp): per-parameter tensors.

Importances are dicts from a trainable parameter's name to a tensor of its shape. They are sums
over examples of a function of *per-example* gradients, the quantity the papers define (the
square of a batch-mean gradient is a different one): ``example_grad_sums`` computes them.
"""

from __future__ import annotations

from collections import Counter
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
    """The output indices task ``task`` trains with (its head in ``task``, the active outputs otherwise)."""
    return layout.mask(torch.tensor([task], device=device), task)[0].nonzero().squeeze(1)


TRANSFORMS = {"square": torch.square, "abs": torch.abs}


def example_grad_sums(model: nn.Module, inputs, extra: Tensor, losses: Callable[[Tensor, Tensor], Tensor],
                      transform: str, weights: Tensor | None = None, shortcut: bool = True) -> Params:
    """sum_n weights[n] * transform(d loss_n / d theta) for every trainable parameter (``square`` or ``abs``).

    ``losses(logits, extra) -> [n]`` is each example's loss from the batch's logits. The model runs
    as it is: callers put it in eval mode, so examples do not interact (no dropout, no batch
    statistics). A Linear layer called once on one vector per example takes Goodfellow's (2015)
    exact shortcut: example n's weight gradient is the outer product delta_n a_n^T, so its square
    or absolute value factors as transform(delta)^T transform(a) and is never formed; every other
    parameter gets true per-example gradients from ``torch.func.vmap``.
    """
    f = TRANSFORMS[transform]
    params = trainable(model)
    n = extra.shape[0]
    w = torch.ones(n, device=extra.device) if weights is None else weights.float()
    out: Params = {}
    fast: dict[str, tuple[nn.Linear, list]] = {}
    hooks = []
    if shortcut:
        owners = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
        for name, m in model.named_modules():
            own = list(m.parameters(recurse=False))
            # a weight shared with another module gets gradient from both uses: no shortcut for it
            if isinstance(m, nn.Linear) and any(p.requires_grad for p in own) and all(owners[id(p)] == 1 for p in own):
                calls: list = []
                fast[name] = (m, calls)
                hooks.append(m.register_forward_hook(lambda mod, args, res, calls=calls: calls.append((args[0], res))))
    try:
        with torch.enable_grad():
            logits = model(inputs)
    finally:
        for h in hooks:
            h.remove()
    fast = {k: v for k, v in fast.items() if len(v[1]) == 1 and v[1][0][0].dim() == 2 and v[1][0][1].requires_grad}
    if fast:
        zs = [calls[0][1] for _, calls in fast.values()]
        deltas = torch.autograd.grad(losses(logits, extra).sum(), zs, allow_unused=True)
        for (name, (m, calls)), delta in zip(fast.items(), deltas):
            a = calls[0][0].detach().float()
            d = torch.zeros(n, m.out_features, device=a.device) if delta is None else delta.float()
            wd = w[:, None] * f(d)
            if m.weight.requires_grad:
                out[f"{name}.weight" if name else "weight"] = (wd.T @ f(a)).to(m.weight.dtype)
            if m.bias is not None and m.bias.requires_grad:
                out[f"{name}.bias" if name else "bias"] = wd.sum(0).to(m.bias.dtype)
    rest = {k: p.detach() for k, p in params.items() if k not in out}
    if rest:
        def one(p, x, e):
            single = functional_call(model, p, (tree_map(lambda t: t.unsqueeze(0), x),))
            return losses(single, e.unsqueeze(0))[0]

        grads = vmap(grad(one), in_dims=(None, 0, 0))(rest, inputs, extra)
        for k, g in grads.items():
            out[k] = torch.tensordot(w, f(g.float()), dims=1).to(params[k].dtype)
    return out


def example_chunks(model: nn.Module, data: TaskData, task: int, device) -> Iterator:
    """Batches of a task's training examples sized so their per-example gradients fit GRAD_BUDGET."""
    n_params = sum(p.numel() for p in trainable(model).values())
    size = max(1, GRAD_BUDGET // max(n_params, 1))
    for batch in iterate_batches(data, task, size, shuffle=False):
        yield batch.to(device)


def mean_grad_sums(model: nn.Module, data: TaskData, task: int, device, terms: Callable, shortcut: bool = True) -> Params:
    """Mean over ``data``'s examples of per-example gradient sums, the model in eval mode: the loop EWC's
    Fisher and MAS's importance share. ``terms(batch)`` gives ``(targets, loss, power, weight)`` tuples,
    each summed with ``example_grad_sums``."""
    total = zeros_like({n: p.detach() for n, p in trainable(model).items()})
    n = 0
    with eval_mode(model):
        for batch in example_chunks(model, data, task, device):
            for ys, loss, power, weight in terms(batch):
                for name, v in example_grad_sums(model, batch.inputs, ys, loss, power, weight,
                                                 shortcut=shortcut).items():
                    total[name] += v
            n += len(batch)
    return {name: t / max(n, 1) for name, t in total.items()}


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
