"""``ewc``: Elastic Weight Consolidation (Kirkpatrick et al. 2017) with a diagonal Fisher.

After each task the diagonal of the Fisher information of the model's predictive distribution
on that task's training inputs is stored with the parameters; while fine-tuning, every old task
k adds ``ewc_lambda / 2 * sum_i F_k,i (theta_i - theta*_k,i)^2`` (one penalty per old task, as
in the paper). The Fisher is the mean over examples of per-example squared gradients of
log p(y|x), over the outputs the task trains with: ``true`` takes the expectation over y under
the model (the Fisher's definition, van de Ven et al.'s "all"), ``empirical`` the true label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..options import Option
from ..streams.lm import LMData
from .base import Method as Base, Terms
from .importance import (Params, allowed_outputs, eval_mode, mean_grad_sums, snapshot, trainable,
                         weighted_sq_distance, zeros_like)

FISHER_LABELS = ("true", "empirical")


def lm_fisher(model: nn.Module, data, task: int, labels: str, device) -> Params:
    """A causal LM's diagonal Fisher: mean over sequences of the squared gradient of log p(y|x).

    y is the sequence's tokens that carry loss (their log-probabilities summed): the data's own
    (``empirical``) or, for ``true``, one token drawn from the model's next-token distribution at
    each of those positions (a one-sample Monte Carlo estimate of the expectation over y, from a
    generator seeded by the task, so runs repeat). One backward pass per sequence.
    """
    from ..causal_lm import shifted

    params = trainable(model)
    fisher = zeros_like({n: p.detach() for n, p in params.items()})
    gen = torch.Generator(device=device).manual_seed(1000 + task)
    with eval_mode(model):
        for i in range(len(data)):
            inputs = {k: v.to(device) for k, v in data.gather(torch.tensor([i]))[0].items()}
            with torch.enable_grad():
                logits, targets = shifted(model(inputs), inputs["labels"])
                mask = targets != -100
                logp = F.log_softmax(logits[mask].float(), dim=-1)
                y = targets[mask]
                if labels == "true":
                    y = torch.multinomial(logp.detach().exp(), 1, generator=gen).squeeze(1)
                ll = logp.gather(1, y[:, None]).sum()
                grads = torch.autograd.grad(ll, list(params.values()), allow_unused=True)
            for (name, _), g in zip(params.items(), grads):
                if g is not None:
                    fisher[name] += g.detach().float().square().to(fisher[name].dtype)
    return {name: f / max(len(data), 1) for name, f in fisher.items()}


def diagonal_fisher(model: nn.Module, data, task: int, layout, labels: str, device, shortcut: bool = True) -> Params:
    """Mean over ``data``'s examples of the squared per-example gradient of log p(y|x), model in eval mode."""
    if isinstance(data, LMData):  # a causal LM's token sequences
        return lm_fisher(model, data, task, labels, device)
    outs = allowed_outputs(layout, task, device)
    position = torch.full((layout.n_outputs,), -1, dtype=torch.long, device=device)
    position[outs] = torch.arange(len(outs), device=device)

    def nll(logits: Tensor, y: Tensor) -> Tensor:
        return -F.log_softmax(logits[:, outs].float(), dim=1).gather(1, y[:, None]).squeeze(1)

    def terms(batch):
        if labels == "empirical":
            return [(position[batch.targets], nll, "square", None)]
        with torch.no_grad():  # the expectation under the model's own prediction (eval mode: see mean_grad_sums)
            probs = F.softmax(model(batch.inputs)[:, outs].float(), dim=1)
        return [(torch.full_like(batch.targets, c), nll, "square", probs[:, c]) for c in range(len(outs))]

    return mean_grad_sums(model, data, task, device, terms, shortcut=shortcut)


class Method(Base):
    name = "ewc"
    options = [
        Option("ewc_lambda", float, 1e5, "EWC penalty weight lambda (1e5: van de Ven et al.'s split-MNIST "
               "task-incremental value; their code uses 1e10 domain, 1e9 class)", minimum=0.0),
        Option("ewc_fisher", str, "true", "labels of the Fisher: true = expectation under the model's prediction "
               "(Kirkpatrick et al. 2017), empirical = the training labels", choices=FISHER_LABELS),
    ]
    strength_option = "ewc_lambda"
    naive_at_zero = True  # its only effect is a penalty weighted by the strength

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.consolidated: list[tuple[Params, Params]] = []  # (Fisher, anchor) of each penalty term

    def after_task(self, trainer, task) -> None:
        if task == len(trainer.stream) - 1:  # no task follows: nothing will be penalised
            return
        fisher = diagonal_fisher(trainer.model, trainer.stream.tasks[task].train, task, trainer.layout,
                                 self.hparams["ewc_fisher"], trainer.device)
        self.consolidate(fisher, snapshot(trainer.model))

    def consolidate(self, fisher: Params, anchor: Params) -> None:
        """One more penalty term per finished task (the paper's EWC)."""
        self.consolidated.append((fisher, anchor))

    def state_dict(self) -> dict:
        return {"consolidated": [{"fisher": dict(f), "anchor": dict(a)} for f, a in self.consolidated]}

    def load_state_dict(self, state: dict) -> None:
        self.consolidated = [(dict(c["fisher"]), dict(c["anchor"])) for c in state["consolidated"]]

    def penalties(self, trainer, batch, logits, task) -> Terms:
        lam = self.hparams["ewc_lambda"]
        if not self.consolidated or lam == 0:
            return {}
        value = 0.5 * torch.stack([weighted_sq_distance(trainer.model, anchor, fisher)
                                   for fisher, anchor in self.consolidated]).sum()
        return {"ewc": (value, lam)}
