"""The KL penalty that keeps a fine-tuned model close to a frozen copy of its old self.

``kl_penalty`` is the exact quantity; ``train_epoch_kl_reg`` is the one-step pattern from
DESIGN.md (student in train mode, teacher in eval mode under ``torch.no_grad``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DIRECTIONS = ("forward", "reverse", "symmetric")


def check_penalty_options(direction: str, temperature: float) -> None:
    """Raise ValueError naming the bad value; shared by the penalty and the CLI."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown KL direction {direction!r}: allowed are {', '.join(DIRECTIONS)}")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number above 0, got {temperature!r}")


def kl_penalty(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    direction: str = "forward",
    temperature: float = 1.0,
) -> Tensor:
    """Mean KL divergence per example between teacher and student class distributions.

    - ``forward``:   KL(p_teacher || p_student), what
      ``F.kl_div(log_softmax(student), softmax(teacher), reduction="batchmean")`` computes;
      the default, since that is what the ``train_epoch_kl_reg`` pattern computes.
    - ``reverse``:   KL(p_student || p_teacher), the direction write-ups of the penalty often state.
    - ``symmetric``: the mean of the two.

    Both logits are divided by ``temperature`` and the result is multiplied by its square
    (Hinton et al. 2015), so gradient scale does not shrink as T grows. The softmaxes run in
    float32 whatever the input dtype; the result is a float32 scalar.
    """
    check_penalty_options(direction, temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}"
        )
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    if direction == "forward":
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    elif direction == "reverse":
        kl = F.kl_div(log_p_teacher, log_p_student, reduction="batchmean", log_target=True)
    else:
        kl = 0.5 * (
            F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
            + F.kl_div(log_p_teacher, log_p_student, reduction="batchmean", log_target=True)
        )
    return kl * (t * t)


def padded_teacher_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    teacher_positions: Tensor,
    *,
    temperature: float = 1.0,
) -> Tensor:
    """Forward KL from a teacher that knew fewer outputs than the student, its distribution padded with zeros.

    ``student_logits`` [batch, n] cover the student's outputs, ``teacher_logits`` [batch, m] the
    teacher's (m <= n), and ``teacher_positions`` [m] says where each teacher output sits among the
    student's. The teacher's softmax over its m outputs gets probability 0 on the student's other
    outputs; the result is KL(p_teacher_padded || p_student) = sum_j p_j (log p_j - log q_pos(j)),
    batchmean, times T^2. That is van de Ven et al.'s class-incremental LwF (soft-target
    cross-entropy over all active classes, minus the teacher's entropy, which has no gradient):
    unlike a KL over the teacher's outputs alone, it grows when the student moves probability to
    the new outputs. Only the forward direction exists: the reverse one is infinite.
    """
    check_penalty_options("forward", temperature)
    if student_logits.shape[0] != teacher_logits.shape[0] or teacher_logits.shape[1] != len(teacher_positions):
        raise ValueError(f"shapes do not match: student {tuple(student_logits.shape)}, teacher "
                         f"{tuple(teacher_logits.shape)}, {len(teacher_positions)} teacher positions")
    t = float(temperature)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1).index_select(1, teacher_positions)
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)


def train_epoch_kl_reg(
    model: nn.Module,
    model_old: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[[Tensor, Tensor], Tensor],
    kl_lambda: float,
    **penalty_options,
) -> dict[str, float]:
    """One optimisation step of cross-entropy plus ``kl_lambda`` times the KL penalty.

    The student is put in train mode (dropout on); the teacher in eval mode and run under
    ``torch.no_grad``, so it builds no graph and receives no gradient. Returns the loss
    parts as floats: ``{"loss", "ce", "kl"}``.
    """
    model.train()
    model_old.eval()
    logits = model(x_train)
    loss_new = criterion(logits, y_train)
    with torch.no_grad():
        teacher_logits = model_old(x_train)
    kl = kl_penalty(logits, teacher_logits, **penalty_options)
    loss = loss_new + kl_lambda * kl
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": float(loss.detach()), "ce": float(loss_new.detach()), "kl": float(kl.detach())}
