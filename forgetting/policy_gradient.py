"""The group-relative policy-gradient loss (GRPO without clipping by default; PPO-style clipping optional).

For each input the policy's own answers are sampled G times and scored; an answer's advantage is its
reward minus its group's mean (optionally divided by the group's standard deviation, GRPO's scaling),
and the loss is −mean(advantage · log π(answer | x)) over the answers' tokens. Its gradient is
REINFORCE with the group mean as baseline (in expectation −(G−1)/G · ∇ E_π[reward], the mean
including the answer itself): a group whose answers are all right, or all wrong, has advantage 0 and
moves nothing. Pure functions: the sampling and the rewards belong to the objective that calls them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, *, scale_by_std: bool = False, eps: float = 1e-6) -> Tensor:
    """Rewards [inputs, G] -> advantages [inputs, G]: reward − group mean (/ (group std + eps) if asked).

    The standard deviation is the population one (``unbiased=False``); TRL's GRPO divides by the
    sample one, larger by √(G/(G−1)), so its advantages are smaller by that constant factor.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [inputs, G] with G >= 2 samples per input, got shape {tuple(rewards.shape)}")
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    if scale_by_std:
        adv = adv / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)
    return adv


def pg_loss(
    log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    *,
    old_log_probs: Tensor | None = None,
    clip: float | None = None,
) -> Tensor:
    """−mean(advantage · log π(token)) over the answers' tokens.

    ``log_probs`` [inputs, G] (one token per answer: a classifier's class) or [inputs, G, length]
    (a completion's tokens, ``mask`` True where a token belongs to the answer); ``advantages``
    [inputs, G], constant within an answer and never differentiated. With ``clip`` = ε, PPO's
    clipped surrogate −mean(min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)), ρ = exp(log π − ``old_log_probs``),
    the old log-probabilities those of the policy that sampled the answers (detached); on the
    first update after sampling ρ = 1 and its gradient is the unclipped one.
    """
    if log_probs.shape[:2] != advantages.shape:
        raise ValueError(f"log_probs {tuple(log_probs.shape)} and advantages {tuple(advantages.shape)} disagree")
    adv = advantages.detach().to(log_probs.dtype)
    if log_probs.dim() == 3:
        adv = adv.unsqueeze(-1).expand_as(log_probs)
    if clip is None:
        per_token = adv * log_probs
    else:
        if not clip > 0:
            raise ValueError(f"clip must be above 0, got {clip!r}")
        old = (log_probs if old_log_probs is None else old_log_probs).detach()
        ratio = torch.exp(log_probs - old)
        per_token = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    if mask is None:
        return -per_token.mean()
    if mask.shape != log_probs.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match log_probs {tuple(log_probs.shape)}")
    m = mask.to(per_token.dtype)
    return -(per_token * m).sum() / m.sum().clamp(min=1.0)


def sample_answers(logits: Tensor, groups: int, generator: torch.Generator, *,
                   allowed: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """G answers per input [inputs, G] from the softmax of ``logits`` [inputs, classes] / temperature, with
    ``allowed`` [classes] (bool) the outputs an example may predict (the others get probability 0).

    Drawn on the CPU from ``generator`` (the loop's seeded one), so a run draws the same answers on any
    device and resumes bitwise from a task boundary that saved the generator's state.
    """
    z = logits.detach().float().cpu() / temperature
    if allowed is not None:
        z = z.masked_fill(~allowed.cpu(), float("-inf"))
    probs = torch.softmax(z, dim=-1)
    return torch.multinomial(probs, groups, replacement=True, generator=generator).to(logits.device)
