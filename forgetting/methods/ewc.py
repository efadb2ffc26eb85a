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
from torch import nn

from ..objectives import Objective
from ..objectives.classification import Classification
from ..options import Option
from .base import Method as Base, Terms
from .importance import Params, mean_grad_sums, snapshot, weighted_sq_distance

FISHER_LABELS = ("true", "empirical")


def diagonal_fisher(model: nn.Module, data, task: int, objective, labels: str, device, shortcut: bool = True) -> Params:
    """Mean over ``data``'s examples of the squared per-example gradient of log p(y|x), model in eval mode, y
    the samples the run's ``objective`` gives (a ``HeadLayout`` stands for the classification objective over it)."""
    if not isinstance(objective, Objective):
        objective = Classification(objective)
    terms = objective.fisher_terms(model, task, labels, device)
    if terms is None:  # an objective that takes the whole Fisher itself (causal LMs: one sequence at a time)
        return objective.fisher(model, data, task, labels, device)
    return mean_grad_sums(model, data, task, device, terms, shortcut=shortcut)


class Method(Base):
    anchors_weights = True  # the penalty pulls the trainable weights towards their values at a boundary
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
        fisher = diagonal_fisher(trainer.model, trainer.stream.tasks[task].train, task, trainer.objective,
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
