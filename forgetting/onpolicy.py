"""``--objective pg``: a step's task loss from the model's own sampled answers (group-relative policy gradient).

For each input of the batch the run's objective draws ``--pg-samples`` G answers from the live model in
eval mode without gradient (the loop's seeded generator, so runs are bitwise reproducible and resume from
a task boundary), the reward scores them (``rewards.py``), and the student, in train mode, is scored on
them: loss = −mean(advantage · log π(answer | x)), advantage = reward − group mean (``policy_gradient.py``).
Methods compose with it as with sft: their penalties are added on the same batch (``kl`` holds the
student to the frozen reference on these inputs), ``replay`` changes the batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .policy_gradient import group_advantages, pg_loss
from .rewards import RewardContext, reward

if TYPE_CHECKING:  # pragma: no cover
    from .train import Trainer


def pg_task_loss(trainer: "Trainer", batch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(student logits on the batch, pg loss, what the loss log records: reward_mean, reward_std (the mean of the
    groups' standard deviations, as TRL logs it) and pg_loss)."""
    config, objective, model, task = trainer.config, trainer.objective, trainer.model, trainer.current_task
    model.eval()
    with torch.no_grad():
        answers, old = objective.sample_answers(model, batch, task, config.pg_samples, trainer.generator,
                                                temperature=config.pg_temperature,
                                                max_new_tokens=config.pg_max_new_tokens,
                                                log_probs=bool(config.pg_clip))
    model.train()
    logits, log_probs, mask = objective.answer_log_probs(model, batch, task, answers, temperature=config.pg_temperature)
    rewards = reward(config.reward)(answers, batch, RewardContext(objective, trainer.stream, task))
    if tuple(rewards.shape) != tuple(log_probs.shape[:2]):
        raise ValueError(f"reward {config.reward!r} gave shape {tuple(rewards.shape)}, expected "
                         f"{tuple(log_probs.shape[:2])}")
    rewards = rewards.float().to(log_probs.device)
    advantages = group_advantages(rewards, scale_by_std=config.pg_scale_std)
    loss = pg_loss(log_probs, advantages, mask, old_log_probs=old, clip=config.pg_clip or None)
    logs = {"reward_mean": rewards.mean(), "reward_std": rewards.std(dim=1, unbiased=False).mean(),
            "pg_loss": loss.detach()}
    return logits, loss, logs
