"""``si``: Synaptic Intelligence (Zenke, Poole & Ganguli 2017).

While training on a task every step adds ``-g_i * delta_theta_i`` to a running path integral
w_i (g: the gradient of the loss without SI's own penalty, as in the paper's code, delta: the
optimiser's actual step). At the task's end the importance grows by
``w_i / ((theta_i(end) - theta_i(start))^2 + si_xi)``; while fine-tuning the penalty is
``si_c * sum_i Omega_i (theta_i - theta*_i)^2`` with theta* the parameters at the last boundary.
A parameter that never moves gets no importance.
"""

from __future__ import annotations

from ..options import Option
from .base import Method as Base, Terms
from .importance import Params, snapshot, trainable, weighted_sq_distance, zeros_like


class Method(Base):
    anchors_weights = True  # the penalty pulls the trainable weights towards their values at a boundary
    name = "si"
    options = [
        Option("si_c", float, 1.0, "SI penalty weight c (Zenke et al. 2017 use 1.0 on split MNIST)", minimum=0.0),
        Option("si_xi", float, 1e-3, "SI damping xi, bounds the importance of parameters that moved little "
               "(Zenke et al. 2017: 1e-3)", minimum=0.0, exclusive_minimum=True),
    ]
    strength_option = "si_c"
    naive_at_zero = True  # its only effect is a penalty weighted by the strength

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.omega: Params | None = None  # importance, summed over finished tasks
        self.anchor: Params | None = None  # parameters at the last task boundary
        self.path: Params = {}  # running -sum g * delta theta of the current task
        self.start: Params = {}
        self._before: Params = {}
        self._grad: Params = {}

    def before_task(self, trainer, task) -> None:
        self.start = snapshot(trainer.model)
        self.path = zeros_like(self.start)

    def state_dict(self) -> dict:
        """The importance and anchor; the path integral restarts in ``before_task``."""
        return {"omega": self.omega, "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.omega, self.anchor = state["omega"], state["anchor"]

    def penalties(self, trainer, batch, logits, task) -> Terms:
        if self.omega is None or self.hparams["si_c"] == 0:
            return {}
        return {"si": (weighted_sq_distance(trainer.model, self.anchor, self.omega), self.hparams["si_c"])}

    def after_backward(self, trainer, task) -> None:
        """Record each parameter and its loss gradient, SI's own penalty gradient taken out."""
        c = self.hparams["si_c"]
        for n, p in trainable(trainer.model).items():
            g = p.grad.detach().clone() if p.grad is not None else None
            if g is not None and self.omega is not None and c != 0:
                g -= 2 * c * self.omega[n] * (p.detach() - self.anchor[n])
            self._grad[n] = g
            self._before[n] = p.detach().clone()

    def after_step(self, trainer, task) -> None:
        for n, p in trainable(trainer.model).items():
            g = self._grad.get(n)
            if g is not None:
                self.path[n] -= g * (p.detach() - self._before[n])

    def after_task(self, trainer, task) -> None:
        end = snapshot(trainer.model)
        xi = self.hparams["si_xi"]
        new = {n: self.path[n] / ((end[n] - self.start[n]) ** 2 + xi) for n in end}
        self.omega = new if self.omega is None else {n: self.omega[n] + new[n] for n in new}
        self.anchor = end
