"""Training recipes from the loop options: the optimiser, its learning-rate schedule, gradient clipping
and mixed precision. The training loops (ours and the Avalanche bridge) build them here, once per task.

- ``--optimizer`` adam (default, as before) | adamw | sgd, with ``--momentum`` (SGD only) and
  ``--weight-decay`` (L2 in the loss's gradient for sgd and adam, decoupled for adamw).
- ``--lr-schedule`` none | cosine | step, stepped once per epoch of each task (a fresh optimiser and
  schedule per task, as in Mammoth and FACIL), after ``--warmup-epochs`` of linear warm-up: in
  warm-up epoch e (0-based) the rate is lr * (e + 1) / W; then cosine gives
  lr * (1 + cos(pi * (e - W) / (E - W))) / 2 over the remaining E - W epochs (torch's CosineAnnealingLR), and step multiplies by
  ``--lr-gamma`` at each epoch of ``--lr-milestones``.
- ``--grad-clip`` N clips the gradients' total L2 norm to N before the optimiser steps (0: off).
- ``--amp`` bf16 | fp16 runs the student's forward pass and task loss under CUDA autocast
  (fp16 with a gradient scaler). Penalties, and so the frozen teacher (cached or live), stay in
  fp32, which keeps the teacher cache exact. On CPU it is refused: CPU autocast is slower than
  fp32 on most machines and would only change the numbers.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .config import AMP, OPTIMIZERS, SCHEDULES  # noqa: F401  (the options are config.LOOP_OPTIONS)
from .errors import BadInput


OWN_LOOP_ONLY = (("lr_schedule", "none"), ("warmup_epochs", 0), ("grad_clip", 0.0), ("amp", "off"), ("train_base", True),
                 ("sft_targets", "label"), ("base_preview", 0), ("learn_tasks", 0),
                 ("finetune_lr", 0.0), ("stop_at_accuracy", 0.0))


def check(loop: dict, runner: str = "forgetting") -> None:
    """BadInput where loop options that are each valid do not go together (or not with the method's loop)."""
    if runner != "forgetting":
        given = [f"--{k.replace('_', '-')} {loop[k]}" for k, default in OWN_LOOP_ONLY if loop.get(k, default) != default]
        if given:
            raise BadInput(f"{', '.join(given)}: applies to our training loop only, not to {runner} strategies "
                           "(they take --optimizer, --momentum and --weight-decay)")
    if loop.get("momentum", 0.0) and loop.get("optimizer", "adam") != "sgd":
        raise BadInput(f"--momentum {loop['momentum']:g}: applies to --optimizer sgd only "
                       f"(not {loop.get('optimizer', 'adam')})")
    if loop.get("lr_schedule", "none") == "step" and not loop.get("lr_milestones"):
        raise BadInput("--lr-schedule step: needs --lr-milestones (epochs after which the rate drops)")
    if loop.get("lr_milestones") and loop.get("lr_schedule", "none") != "step":
        raise BadInput(f"--lr-milestones: applies to --lr-schedule step only (not {loop.get('lr_schedule', 'none')})")


def check_device(amp: str, device: torch.device) -> None:
    if amp != "off" and torch.device(device).type != "cuda":
        raise BadInput(f"--amp {amp}: mixed precision runs on CUDA only; on {torch.device(device).type} "
                       "use --amp off")


def build_optimizer(params, config, task: int = 0) -> torch.optim.Optimizer:
    """The optimiser ``config``'s loop options name, over ``params``, for ``task`` (``--finetune-lr`` from task 1 on)."""
    params = list(params)
    lr, wd = (config.finetune_lr if task > 0 and config.finetune_lr else config.lr), config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def lr_factor(epoch: int, config) -> float:
    """The learning rate of 0-based ``epoch`` of a task as a fraction of ``--lr``."""
    warmup, epochs = config.warmup_epochs, config.epochs
    if epoch < warmup:
        return (epoch + 1) / warmup
    if config.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(epochs - warmup, 1)))
    if config.lr_schedule == "step":
        return config.lr_gamma ** sum(1 for m in config.lr_milestones if epoch >= m)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, config) -> torch.optim.lr_scheduler.LambdaLR | None:
    """A per-epoch schedule (``scheduler.step()`` after each epoch), or None for a constant rate."""
    if config.lr_schedule == "none" and config.warmup_epochs == 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, config))


def autocast(device: torch.device, amp: str):
    """The autocast context of ``--amp`` (none when off)."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type,
                          dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device: torch.device, amp: str):
    """fp16 needs its loss scaled against underflow; None otherwise."""
    return torch.amp.GradScaler(torch.device(device).type) if amp == "fp16" else None


def clip(model: nn.Module, max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
