"""``rdrop``: R-Drop (Liang et al. 2021), the self-consistency sibling of the KL penalty.

Two forward passes of the same student with dropout give two distributions; the loss is the
mean of their cross-entropies plus ``rdrop_alpha`` times the symmetric KL between them
(batchmean, float32). That is the paper's loss, CE1 + CE2 + a * (KL12 + KL21) / 2, halved, with
``rdrop_alpha`` = a / 2: the data loss keeps the scale of one pass, so learning rates and other
penalties' weights mean the same as for plain fine-tuning. In eval mode there is one pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..options import Option
from ..penalty import kl_penalty
from .base import Method as Base, Terms, masked_cross_entropy


def per_head_symmetric_kl(layout, logits1: Tensor, logits2: Tensor, task_ids: Tensor, task: int) -> Tensor:
    """Symmetric KL per example over the outputs it predicts with while ``task`` trains, batch mean.

    In ``task`` each example's own head is compared (other heads play no part in its
    prediction); in ``domain`` all outputs; in ``class`` the active outputs of ``task``.
    """
    if layout.scenario != "task":
        active = layout.active_outputs(task)
        if active is None:
            return kl_penalty(logits1, logits2, direction="symmetric")
        idx = torch.as_tensor(active, device=logits1.device)
        return kl_penalty(logits1.index_select(1, idx), logits2.index_select(1, idx), direction="symmetric")
    total = logits1.new_zeros((), dtype=torch.float32)
    for t in torch.unique(task_ids).tolist():
        rows = (task_ids == t).nonzero(as_tuple=True)[0]
        outs = torch.as_tensor(layout.task_outputs[t], device=logits1.device)
        a = logits1.index_select(0, rows).index_select(1, outs)
        b = logits2.index_select(0, rows).index_select(1, outs)
        total = total + kl_penalty(a, b, direction="symmetric") * len(rows)
    return total / len(task_ids)


class Method(Base):
    needs = frozenset({"class_distribution"})
    needs_why = "R-Drop's two-pass consistency is defined here for one class distribution per example"
    name = "rdrop"
    options = [
        Option("rdrop_alpha", float, 1.0, "weight of the symmetric KL between the two dropout passes "
               "(equals the paper's alpha / 2, see forgetting/methods/rdrop.py)", minimum=0.0),
    ]
    changes_task_loss = True
    strength_option = "rdrop_alpha"

    def task_loss(self, trainer, batch) -> tuple[Tensor, Tensor, Terms]:
        model = trainer.model
        logits1 = model(batch.inputs)
        ce1 = masked_cross_entropy(trainer, logits1, batch)
        if not model.training:  # no dropout, the second pass would repeat the first
            return logits1, ce1, {}
        logits2 = model(batch.inputs)
        ce2 = masked_cross_entropy(trainer, logits2, batch)
        kl = per_head_symmetric_kl(trainer.layout, logits1, logits2, batch.task_ids, trainer.current_task)
        return logits1, 0.5 * (ce1 + ce2), {"rdrop": (kl, self.hparams["rdrop_alpha"])}
