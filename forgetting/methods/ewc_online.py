"""``ewc-online``: online EWC (Schwarz et al. 2018; Huszar 2018): one running penalty.

After task t the stored Fisher becomes ``ewc_gamma * F_old + F_t`` and the anchor the parameters
after task t, so memory and cost stay constant however many tasks pass; ``ewc_gamma`` < 1 lets
old tasks fade. While fine-tuning the penalty is ``ewc_lambda / 2 * sum_i ewc_gamma * F_i
(theta_i - theta*_i)^2``: the stored Fisher is decayed once more in the penalty, as Schwarz et
al. (2018, eq. 8) and van de Ven et al.'s code do, so ``ewc_lambda`` means what it means there.
"""

from __future__ import annotations

from ..options import Option
from .base import Terms
from .ewc import Method as EWC
from .importance import Params


class Method(EWC):
    name = "ewc-online"
    options = EWC.options + [
        Option("ewc_gamma", float, 1.0, "online EWC decay of the running Fisher (1.0 as in van de Ven et al.; "
               "Schwarz et al. 2018 use values just below 1)", minimum=0.0, maximum=1.0),
    ]

    def consolidate(self, fisher: Params, anchor: Params) -> None:
        if self.consolidated:
            old, _ = self.consolidated[0]
            fisher = {n: self.hparams["ewc_gamma"] * old[n] + f for n, f in fisher.items()}
        self.consolidated = [(fisher, anchor)]

    def penalties(self, trainer, batch, logits, task) -> Terms:
        terms = super().penalties(trainer, batch, logits, task)
        if "ewc" in terms:
            value, lam = terms["ewc"]
            terms["ewc"] = (self.hparams["ewc_gamma"] * value, lam)
        return terms
