"""Sampled-token estimators of a KL divergence (Schulman 2020, "Approximating KL divergence"), beside the exact one.

RL libraries penalise the KL to a reference with one of three per-sample estimators, evaluated at
answers *sampled from one of the two distributions*; which KL they estimate, and how, decides what a
penalty weight λ means, so a λ read in one tool can only be carried to another through this table.
With samples a ~ P and ``log_ratio = log P(a) - log Q(a)``:

=========  ==================================  ===========================================
estimator  per sample                          expectation under a ~ P
=========  ==================================  ===========================================
``k1``     ``log_ratio``                       KL(P ‖ Q) (unbiased; high variance; can be < 0)
``k2``     ``½ log_ratio²``                    ½ E_P[log_ratio²] = KL(P ‖ Q) + O(‖P − Q‖³)
                                               (biased, low variance, ≥ 0)
``k3``     ``exp(−log_ratio) + log_ratio − 1`` KL(P ‖ Q) (unbiased, ≥ 0; TRL's GRPO ``kl``)
``exact``  Σ_a P(a) (log P(a) − log Q(a))      KL(P ‖ Q), the whole distribution, no sample
=========  ==================================  ===========================================

On-policy (P = the student π_θ being sampled, Q = the frozen reference π_ref) they estimate
KL(π_θ ‖ π_ref): the harness's ``--kl-direction reverse``. Its default penalty, ``forward``, is
KL(π_ref ‖ π_θ), which the sampled estimators reach only with samples from the reference. A λ of
TRL's GRPO (``beta``, k3 on the policy's samples) is therefore a λ of ``reverse`` here, not of the
default ``forward``; k2's λ matches to second order only.
"""

from __future__ import annotations

import torch
from torch import Tensor

ESTIMATORS = ("exact", "k1", "k2", "k3")
SAMPLED = ("k1", "k2", "k3")


def check_estimator(name: str) -> None:
    """ValueError naming the bad value and the allowed ones."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown KL estimator {name!r}: allowed are {', '.join(ESTIMATORS)}")


def sampled_kl(log_p: Tensor, log_q: Tensor, estimator: str) -> Tensor:
    """The per-sample estimate, elementwise, at answers drawn from P: ``log_p``/``log_q`` are log P(a), log Q(a).

    Gradients flow through both arguments as written (detach the reference's); the result has their
    shape, so masking and averaging over tokens stay with the caller.
    """
    if estimator not in SAMPLED:
        raise ValueError(f"unknown sampled KL estimator {estimator!r}: allowed are {', '.join(SAMPLED)}")
    log_ratio = log_p - log_q
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio * log_ratio
    return torch.exp(-log_ratio) + log_ratio - 1.0


def exact_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(P ‖ Q) over the last dimension of full log-distributions (one value per leading index)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def expectation(log_p: Tensor, log_q: Tensor, estimator: str) -> Tensor:
    """What ``estimator`` estimates, in closed form, for samples from P (the table above): KL(P ‖ Q) for
    ``exact``, ``k1`` and ``k3``, ½ E_P[(log P − log Q)²] for ``k2``."""
    check_estimator(estimator)
    if estimator == "k2":
        return (log_p.exp() * 0.5 * (log_p - log_q) ** 2).sum(-1)
    return exact_kl(log_p, log_q)
