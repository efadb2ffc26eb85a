"""``mas``: Memory Aware Synapses (Aljundi et al. 2018).

A parameter's importance is the mean over a task's training inputs of the absolute gradient of
the squared L2 norm of the model's output (the outputs the task predicts with), per example,
so it needs no labels. Importances add up over tasks; while fine-tuning the penalty is
``mas_lambda * sum_i Omega_i (theta_i - theta*_i)^2`` with theta* the last boundary's parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..options import Option
from .base import Method as Base, Terms
from .importance import Params, allowed_outputs, mean_grad_sums, snapshot, weighted_sq_distance


def output_sensitivity(model: nn.Module, data, task: int, layout, device, shortcut: bool = True) -> Params:
    """Mean over ``data``'s examples of |d ||f(x)||^2 / d theta|, model in eval mode."""
    outs = allowed_outputs(layout, task, device)

    def sq_norm(logits: Tensor, _unused: Tensor) -> Tensor:
        return (logits[:, outs].float() ** 2).sum(1)

    def terms(batch):
        return [(torch.zeros_like(batch.targets), sq_norm, "abs", None)]

    return mean_grad_sums(model, data, task, device, terms, shortcut=shortcut)


class Method(Base):
    needs = frozenset({"class_distribution"})
    needs_why = "MAS's importance is the gradient of the squared norm of the class outputs"
    anchors_weights = True
    name = "mas"
    options = [
        Option("mas_lambda", float, 1.0, "MAS penalty weight lambda (Aljundi et al. 2018: 1.0)", minimum=0.0),
    ]
    strength_option = "mas_lambda"
    naive_at_zero = True  # its only effect is a penalty weighted by the strength

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.omega: Params | None = None
        self.anchor: Params | None = None

    def after_task(self, trainer, task) -> None:
        if task == len(trainer.stream) - 1:  # no task follows: nothing will be penalised
            return
        new = output_sensitivity(trainer.model, trainer.stream.tasks[task].train, task, trainer.layout, trainer.device)
        self.omega = new if self.omega is None else {n: self.omega[n] + new[n] for n in new}
        self.anchor = snapshot(trainer.model)

    def state_dict(self) -> dict:
        return {"omega": self.omega, "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.omega, self.anchor = state["omega"], state["anchor"]

    def penalties(self, trainer, batch, logits, task) -> Terms:
        if self.omega is None or self.hparams["mas_lambda"] == 0:
            return {}
        return {"mas": (weighted_sq_distance(trainer.model, self.anchor, self.omega), self.hparams["mas_lambda"])}
