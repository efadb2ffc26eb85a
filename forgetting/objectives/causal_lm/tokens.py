"""How a causal LM's logits meet its labels: shifted by one, masked where no loss is taken (-100)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


def shifted(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(logits at positions 0..L-2, the tokens they predict at 1..L-1)."""
    return logits[:, :-1], labels[:, 1:]


def loss_mask(labels: Tensor) -> Tensor:
    """Boolean [batch, length - 1]: the logits positions whose next token carries loss."""
    return labels[:, 1:] != IGNORE


def token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the positions that carry loss, float32."""
    lg, lb = shifted(logits, labels)
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), lb.reshape(-1), ignore_index=IGNORE)
