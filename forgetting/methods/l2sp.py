"""``l2sp``: L2-SP (Li, Grandvalet & Davoine 2018): an L2 pull towards the snapshot's weights.

While fine-tuning, ``l2sp_alpha / 2 * ||theta - theta*||^2`` with theta* the frozen snapshot at
the last task boundary (``trainer.previous_model``): every parameter is equally important, the
baseline that EWC, SI and MAS refine by weighting. The paper's second term (plain L2 decay of
parameters absent from the source model) has nothing to act on here: every head exists from
the start.
"""

from __future__ import annotations

from ..options import Option
from .base import Method as Base, Terms
from .importance import weighted_sq_distance


class Method(Base):
    anchors_weights = True  # the penalty pulls the trainable weights towards their values at a boundary
    name = "l2sp"
    options = [
        Option("l2sp_alpha", float, 0.1, "weight alpha of the L2 pull towards the snapshot's weights "
               "(Li et al. 2018: 0.1)", minimum=0.0),
    ]
    strength_option = "l2sp_alpha"
    naive_at_zero = True  # its only effect is a penalty weighted by the strength

    def penalties(self, trainer, batch, logits, task) -> Terms:
        alpha = self.hparams["l2sp_alpha"]
        if task == 0 or alpha == 0:
            return {}
        anchor = dict(trainer.previous_model.named_parameters())  # frozen: no gradient flows into it
        return {"l2sp": (0.5 * weighted_sq_distance(trainer.model, anchor), alpha)}

