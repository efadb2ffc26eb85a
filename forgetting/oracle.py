"""``--sft-targets oracle``: SFT on the correct-answer distribution closest to the reference (RL's Razor's oracle).

Where a task declares a *set* of correct answers per example (``Task.answers``), many target distributions
solve it; the one of least KL(q ‖ π_ref) among those supported on the correct set is π_ref restricted to
the set and renormalised, q(a) = π_ref(a) / Σ_{c ∈ correct} π_ref(c) (Shenfeld, Pari & Agrawal 2025: the
"oracle" SFT that fine-tunes as little away from the base as solving the task allows). The loss is the
cross-entropy H(q, π_θ) = KL(q ‖ π_θ) + H(q). An example without an answer set has the set {its target}:
q is one-hot and the loss is the ordinary cross-entropy. Pure functions; the objective supplies the logits.
"""

from __future__ import annotations

import torch
from torch import Tensor


def oracle_targets(reference_logits: Tensor, correct: Tensor) -> Tensor:
    """q [n, classes]: softmax of ``reference_logits`` restricted to ``correct`` (bool [n, classes], at least one True
    per row; logits of -inf are outputs the example may not predict) and renormalised. Computed as a softmax over the
    restricted logits, so a correct set the reference gives almost no mass still gets a proper distribution."""
    if not bool(correct.any(dim=1).all()):
        raise ValueError("every example needs at least one correct answer")
    restricted = reference_logits.detach().masked_fill(~correct, float("-inf"))
    return torch.softmax(restricted, dim=1)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """mean over examples of −Σ_a q(a) log softmax(logits)(a); outputs with q(a) = 0 add nothing (even at -inf logits)."""
    log_p = torch.log_softmax(logits, dim=1)
    return -torch.where(targets > 0, targets * log_p, torch.zeros_like(log_p)).sum(1).mean()
