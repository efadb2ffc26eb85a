"""The KL penalty that keeps a fine-tuned model close to a frozen copy of its old self.

``kl_penalty`` is the exact quantity for classifiers; ``token_kl_penalty`` the same at every
position of a causal LM's sequences that carries loss; ``train_epoch_kl_reg`` is the one-step pattern from
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
    log_p_student = F.log_softmax(_at(student_logits, t), dim=-1)
    log_p_teacher = F.log_softmax(_at(teacher_logits, t), dim=-1)
    if direction == "forward":
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    elif direction == "reverse":
        kl = F.kl_div(log_p_teacher, log_p_student, reduction="batchmean", log_target=True)
    else:
        kl = 0.5 * (
            F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
            + F.kl_div(log_p_teacher, log_p_student, reduction="batchmean", log_target=True)
        )
    return _squared(kl, t)


def _at(logits: Tensor, t: float) -> Tensor:
    """Float32 logits at temperature ``t``: at T = 1 the logits themselves (x / 1 is x, so the numbers are the
    same and a step builds two nodes fewer)."""
    logits = logits.float()
    return logits if t == 1.0 else logits / t


def _squared(kl: Tensor, t: float) -> Tensor:
    """The T^2 scaling (Hinton et al.), skipped at T = 1 where it is a multiplication by 1."""
    return kl if t == 1.0 else kl * (t * t)


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
    log_q = F.log_softmax(_at(student_logits, t), dim=-1).index_select(1, teacher_positions)
    log_p = F.log_softmax(_at(teacher_logits, t), dim=-1)
    return _squared(F.kl_div(log_q, log_p, reduction="batchmean", log_target=True), t)


# Floats of one chunk's float32 log-probabilities in ``token_kl_penalty`` (16 MiB): bounds its memory.
TOKEN_CHUNK_FLOATS = 2**22


def _kl_sum(student: Tensor, teacher: Tensor, rows: Tensor, direction: str, t: float) -> Tensor:
    """Sum over the positions ``rows`` of the flat [positions, vocabulary] logits of the KL, float32."""
    log_s = F.log_softmax(student.index_select(0, rows).float() / t, dim=-1)
    log_t = F.log_softmax(teacher.index_select(0, rows).float() / t, dim=-1)
    forward = reverse = None
    if direction in ("forward", "symmetric"):
        forward = F.kl_div(log_s, log_t, reduction="sum", log_target=True)
    if direction in ("reverse", "symmetric"):
        reverse = F.kl_div(log_t, log_s, reduction="sum", log_target=True)
    if direction == "forward":
        return forward
    if direction == "reverse":
        return reverse
    return 0.5 * (forward + reverse)


def token_kl_sum(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    *,
    direction: str = "forward",
    temperature: float = 1.0,
    chunk_floats: int = TOKEN_CHUNK_FLOATS,
) -> tuple[Tensor, int]:
    """(sum of the per-token KL over the positions where ``mask`` is True, number of such positions).

    Logits are [..., vocabulary] with ``mask`` of their leading shape. The positions are taken
    in chunks of at most ``chunk_floats`` logits, each through ``torch.utils.checkpoint`` when a
    gradient is needed, so the float32 log-probabilities of one chunk at a time are alive: memory
    stays bounded however long the sequences and large the vocabulary.
    """
    check_penalty_options(direction, temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}"
        )
    if mask.shape != student_logits.shape[:-1]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match logits {tuple(student_logits.shape)}")
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.detach().reshape(-1, vocab)
    positions = mask.reshape(-1).nonzero().squeeze(1)
    n = int(positions.numel())
    t = float(temperature)
    if n == 0:
        return student.sum().float() * 0.0, 0
    step = max(1, chunk_floats // vocab)
    grad = torch.is_grad_enabled() and student.requires_grad
    total = None
    for start in range(0, n, step):
        rows = positions[start : start + step]
        if grad and n > step:
            from torch.utils.checkpoint import checkpoint

            part = checkpoint(_kl_sum, student, teacher, rows, direction, t, use_reentrant=False)
        else:
            part = _kl_sum(student, teacher, rows, direction, t)
        total = part if total is None else total + part
    return total * (t * t), n


def token_kl_penalty(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    *,
    direction: str = "forward",
    temperature: float = 1.0,
    chunk_floats: int = TOKEN_CHUNK_FLOATS,
) -> Tensor:
    """Mean over the positions that carry loss of the KL between next-token distributions (causal LMs).

    ``student_logits`` and ``teacher_logits`` are [batch, length, vocabulary] (or any [..., V]);
    ``mask`` is True at the positions whose next token carries loss (not padding, and in
    prompt/response tasks not the prompt). Each position's KL is taken over the whole
    vocabulary in float32, in the ``direction`` and at the ``temperature`` of ``kl_penalty``
    (scaled by T^2); the result is their mean over the masked positions of the batch, so
    padding and prompt positions contribute nothing and the value does not depend on how a
    batch is padded. Zero (with a graph) when no position is masked.
    """
    total, n = token_kl_sum(student_logits, teacher_logits, mask, direction=direction, temperature=temperature,
                            chunk_floats=chunk_floats)
    return total / max(n, 1)


def token_kl_estimate(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    *,
    estimator: str,
    direction: str = "forward",
    temperature: float = 1.0,
) -> Tensor:
    """Mean over the positions where ``mask`` is True of a sampled-token KL estimate (``kl_estimators``) at the
    token ``tokens`` observed there (causal LMs: the next token of the sequence in use).

    P and Q follow ``direction`` as in ``token_kl_penalty``: forward = KL(teacher ‖ student) (P = the teacher),
    reverse = KL(student ‖ teacher), symmetric = the mean of both. The estimate is unbiased (k1, k3) only where
    the tokens are drawn from P; the caller decides where they come from (README, "The KL's inputs").
    Log-probabilities at temperature T in float32, the result scaled by T^2 as the exact penalty is.
    """
    from .kl_estimators import check_estimator, sampled_kl

    check_penalty_options(direction, temperature)
    check_estimator(estimator)
    if estimator == "exact":
        return token_kl_penalty(student_logits, teacher_logits, mask, direction=direction, temperature=temperature)
    t = float(temperature)
    rows = mask.reshape(-1).nonzero().squeeze(1)
    vocab = student_logits.shape[-1]
    if rows.numel() == 0:
        return student_logits.sum().float() * 0.0
    at = tokens.reshape(-1).index_select(0, rows)[:, None]
    log_s = F.log_softmax(student_logits.reshape(-1, vocab).index_select(0, rows).float() / t, -1).gather(1, at)
    log_t = F.log_softmax(teacher_logits.detach().reshape(-1, vocab).index_select(0, rows).float() / t,
                          -1).gather(1, at)
    parts = []
    if direction in ("forward", "symmetric"):
        parts.append(sampled_kl(log_t, log_s, estimator))
    if direction in ("reverse", "symmetric"):
        parts.append(sampled_kl(log_s, log_t, estimator))
    return (sum(parts) / len(parts)).mean() * (t * t)


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


def grouped_kl_penalty(student_logits: Tensor, teacher_logits: Tensor, groups, **options) -> Tensor:
    """The mean of ``kl_penalty`` over groups of outputs (LwF's old heads): each group an index tensor or
    list of output indices, or None for every output (no copy is made then)."""
    kls = []
    for idx in groups:
        if idx is None:
            kls.append(kl_penalty(student_logits, teacher_logits, **options))
            continue
        if not isinstance(idx, Tensor):
            idx = torch.as_tensor(list(idx), device=student_logits.device)
        kls.append(kl_penalty(student_logits.index_select(1, idx), teacher_logits.index_select(1, idx), **options))
    return kls[0] if len(kls) == 1 else torch.stack(kls).mean()
