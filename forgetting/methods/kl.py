"""``kl``: the KL penalty towards a frozen, eval-mode snapshot of the model at the last task boundary.

On the new task's inputs the student's class distribution is held close to the teacher's
(``kl_penalty``), on every output group the teacher knew: each old head in ``task``, the shared
head in ``domain``, the old classes in ``class`` (LwF's placement, Li & Hoiem 2016).
"""

from __future__ import annotations

import torch

from ..options import Option
from ..penalty import DIRECTIONS, kl_penalty
from .base import Method as Base, Terms


class Method(Base):
    name = "kl"
    options = [
        Option("kl_lambda", float, 1.0, "weight of the KL penalty (0 is plain fine-tuning)", minimum=0.0),
        Option("kl_direction", str, "forward", "forward = KL(p_old || p_new), what F.kl_div(log p_new, p_old) computes; "
               "reverse = KL(p_new || p_old); symmetric = their mean", choices=DIRECTIONS),
        Option("temperature", float, 1.0, "softmax temperature T of the penalty (result scaled by T^2; LwF uses 2)",
               minimum=0.0, exclusive_minimum=True),
    ]
    strength_option = "kl_lambda"

    def teacher_logits(self, trainer, batch) -> torch.Tensor:
        """The frozen teacher's logits on the batch: eval mode, no graph."""
        teacher = trainer.previous_model
        assert not teacher.training, "the teacher must be in eval mode"
        with torch.no_grad():
            return teacher(batch.inputs)

    def penalties(self, trainer, batch, logits, task) -> Terms:
        lam = self.hparams["kl_lambda"]
        if task == 0 or lam == 0:
            return {}
        teacher = self.teacher_logits(trainer, batch)
        groups = trainer.layout.penalty_outputs(task)
        kls = []
        for outs in groups:
            idx = torch.as_tensor(outs, device=logits.device)
            kls.append(kl_penalty(logits.index_select(1, idx), teacher.index_select(1, idx),
                                  direction=self.hparams["kl_direction"], temperature=self.hparams["temperature"]))
        return {"kl": (torch.stack(kls).mean(), lam)}
