"""The KL a trainer logs, and what it estimates (``forgetting.kl_estimators``' table), for the rows of a
TRL run beside the harness's own ``kl_base``.

A callback sees the trainer's arguments and logs only, so the trainer is known by its config class;
``KLRegularizedSFTTrainer`` announces its penalty to the callback itself (``penalty``).

=====================  ===========================================================================
trainer                ``trainer_kl`` and its estimator
=====================  ===========================================================================
GRPOTrainer, beta > 0  its logged ``kl``: k3 per token at the policy's own sampled completions,
                       unbiased for KL(π_θ ‖ π_ref) (the reverse KL), at its sampling temperature
DPOTrainer             its logged ``rewards/chosen`` / beta: k1 summed over the chosen response's
                       tokens, log π_θ(y_w|x) − log π_ref(y_w|x), at data neither model sampled:
                       a surrogate that estimates no KL (it can be negative)
KLRegularizedSFT…      its logged ``kl``: the exact per-token KL over the vocabulary at the training
                       batch's completion tokens, in its ``kl_direction`` and temperature
SFTTrainer, GRPO β=0   none (empty): the trainer logs no KL
=====================  ===========================================================================
"""

from __future__ import annotations

NAN = float("nan")


def trainer_kl(args, logs: dict, penalty: dict | None = None) -> tuple[float, str]:
    """(the trainer's KL at this log, its estimator named) from its arguments and a training log;
    (NaN, "") for a trainer that logs none."""
    kind = type(args).__name__
    if penalty is not None and "kl" in logs:
        d, t = penalty["direction"], penalty["temperature"]
        which = {"forward": "KL(pi_ref||pi_theta)", "reverse": "KL(pi_theta||pi_ref)",
                 "symmetric": "(KL(pi_ref||pi_theta)+KL(pi_theta||pi_ref))/2"}[d]
        return float(logs["kl"]), (f"exact {which} per token over the vocabulary at the training batch's loss tokens, "
                                   f"temperature {t:g} (KLRegularizedSFTTrainer kl)")
    if kind == "GRPOConfig" and getattr(args, "beta", 0.0) and logs.get("kl") is not None:
        return float(logs["kl"]), (f"k3 per token at the policy's sampled completions: KL(pi_theta||pi_ref), "
                                   f"temperature {args.temperature:g} (TRL GRPO kl)")
    if kind == "DPOConfig" and getattr(args, "beta", 0.0) and logs.get("rewards/chosen") is not None:
        return float(logs["rewards/chosen"]) / args.beta, ("k1 summed over the chosen response: log pi_theta(y_w|x) - "
                                                           "log pi_ref(y_w|x) at data, not samples: estimates no KL "
                                                           "(TRL DPO rewards/chosen / beta)")
    return NAN, ""


__all__ = ["trainer_kl"]
