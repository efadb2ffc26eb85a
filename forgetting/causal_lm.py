"""How the loop, the methods and the evaluator read a causal LM's logits (the ``causal-lm`` objective).

A classifier's logits are [batch, outputs] with one target per example; a causal LM's are
[batch, length, vocabulary] and the batch dict's ``labels`` (Hugging Face's convention, -100
where no loss is taken) say which next tokens carry loss. Position i of the logits predicts
token i + 1, so logits and labels are compared shifted by one (``shifted``): the positions that
carry loss are ``labels[:, 1:] != -100`` on ``logits[:, :-1]``. The data loss is the mean
token cross-entropy over those positions in the batch (what ``model(..., labels=...).loss`` of a
Hugging Face causal LM computes); the KL penalty is taken at the same positions.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .errors import BadInput
from .streams.lm import is_lm

IGNORE = -100

# Methods that do not apply to causal LMs, and why (refused with one line before anything is written).
NOT_FOR_LM = {
    "rdrop": "R-Drop's two-pass consistency is defined here for one class distribution per example",
    "mas": "MAS's importance is the gradient of the squared norm of the class outputs",
}
# Methods that anchor the trainable weights: under LoRA those are fresh adapters at every task.
NOT_WITH_LORA = ("ewc", "ewc-online", "si", "mas", "l2sp")


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


def check_methods(stream, methods, model=None, device=None) -> None:
    """BadInput naming a method that does not apply to a causal-LM stream (or to LoRA fine-tuning),
    or bf16 precision off a GPU."""
    if not is_lm(stream):
        return
    if getattr(model, "precision", "float32") == "bf16" and device is not None and device.type != "cuda":
        raise BadInput(f"--precision bf16: autocast runs on cuda only, the device is {device.type}; allowed here: "
                       "float32")
    for m in methods:
        if getattr(m, "standalone", False) or m.name.startswith("avalanche-"):
            raise BadInput(f"--method {m.name}: Avalanche's strategies train classifiers; allowed for causal LMs: "
                           "naive, kl, joint, replay, ewc, ewc-online, si, l2sp and their compositions")
        if m.name in NOT_FOR_LM:
            raise BadInput(f"--method {m.name}: does not apply to causal LMs ({NOT_FOR_LM[m.name]}); allowed: naive, "
                           "kl, joint, replay, ewc, ewc-online, si, l2sp and their compositions")
        if getattr(model, "lora", None) and m.name in NOT_WITH_LORA:
            raise BadInput(f"--method {m.name} with --lora-rank: the method anchors the trainable weights, which under "
                           "LoRA are fresh adapters at every task; allowed with LoRA: naive, kl, joint, replay and "
                           "their compositions")


__all__ = ["IGNORE", "check_methods", "is_lm", "loss_mask", "shifted", "token_loss"]
