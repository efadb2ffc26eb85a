"""``ewc-online``: online EWC (Schwarz et al. 2018; Huszar 2018): one running penalty.

After task t the Fisher becomes ``ewc_gamma * F_old + F_t`` and the anchor the parameters after
task t, so memory and cost stay constant however many tasks pass; ``ewc_gamma`` < 1 lets old
tasks fade.
"""

from __future__ import annotations

from ..options import Option
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
