"""kl_penalty against hand-computed values, and its scaling laws."""

import math

import pytest
import torch
import torch.nn.functional as F

from forgetting import kl_penalty

STUDENT = [[1, 3, 0.5, 2], [0.1, -1, 2, 0.5], [-2, -1, -0.5, -3]]
TEACHER = [[0.5, 1, 2, -1], [1, 0, -1, 2], [0, 0, 0, 0]]


def softmax(row, t=1.0):
    e = [math.exp(x / t) for x in row]
    z = sum(e)
    return [x / z for x in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def hand(direction, t=1.0):
    """Mean over the batch of sum_c p log(p/q), in plain Python floats, times T^2."""
    fwd = sum(kl(softmax(b, t), softmax(a, t)) for a, b in zip(STUDENT, TEACHER)) / len(STUDENT)
    rev = sum(kl(softmax(a, t), softmax(b, t)) for a, b in zip(STUDENT, TEACHER)) / len(STUDENT)
    return {"forward": fwd, "reverse": rev, "symmetric": (fwd + rev) / 2}[direction] * t * t


S = torch.tensor(STUDENT, dtype=torch.float64)
T = torch.tensor(TEACHER, dtype=torch.float64)


@pytest.mark.parametrize("direction,expected", [
    ("forward", 0.9137716823012892), ("reverse", 1.028754009534703), ("symmetric", 0.9712628459179962),
])
def test_hand_values(direction, expected):
    assert hand(direction) == pytest.approx(expected, abs=1e-12)  # the reference itself, pinned
    assert float(kl_penalty(S, T, direction=direction)) == pytest.approx(expected, abs=1e-6)


def test_forward_is_what_kl_div_with_teacher_target_computes():
    ref = F.kl_div(F.log_softmax(S.float(), 1), F.softmax(T.float(), 1), reduction="batchmean")
    assert float(kl_penalty(S, T)) == pytest.approx(float(ref), abs=1e-6)
    # and it is not the reverse direction, nor the "mean" reduction (which also divides by classes)
    assert abs(float(kl_penalty(S, T)) - hand("reverse")) > 0.1
    wrong_mean = F.kl_div(F.log_softmax(S.float(), 1), F.softmax(T.float(), 1), reduction="mean")
    assert float(wrong_mean) == pytest.approx(hand("forward") / 4, abs=1e-6)


@pytest.mark.parametrize("direction", ["forward", "reverse", "symmetric"])
def test_batchmean_unchanged_by_repeating_the_batch(direction):
    one = kl_penalty(S, T, direction=direction)
    two = kl_penalty(torch.cat([S, S]), torch.cat([T, T]), direction=direction)
    assert float(two) == pytest.approx(float(one), abs=1e-6)


@pytest.mark.parametrize("direction", ["forward", "reverse", "symmetric"])
def test_temperature_divides_logits_and_scales_by_t_squared(direction):
    got = float(kl_penalty(S, T, direction=direction, temperature=2.0))
    assert got == pytest.approx(hand(direction, 2.0), abs=1e-6)
    unscaled = float(kl_penalty(S / 2, T / 2, direction=direction))
    assert got == pytest.approx(4 * unscaled, abs=1e-6)


@pytest.mark.parametrize("direction", ["forward", "reverse", "symmetric"])
def test_zero_when_student_equals_teacher(direction):
    assert float(kl_penalty(S, S.clone(), direction=direction)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("direction", ["forward", "reverse", "symmetric"])
def test_finite_for_extreme_logits(direction):
    s = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]])
    t = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, 0.0]])
    v = kl_penalty(s, t, direction=direction)
    assert torch.isfinite(v) and float(v) > 0
    s.requires_grad_(True)
    kl_penalty(s, t, direction=direction).backward()
    assert torch.isfinite(s.grad).all()


def test_float32_under_half_precision_inputs():
    v = kl_penalty(S.to(torch.bfloat16), T.to(torch.bfloat16))
    assert v.dtype == torch.float32
    assert float(v) == pytest.approx(hand("forward"), abs=2e-2)  # bf16 logits, float32 softmax


def test_bad_options_raise():
    with pytest.raises(ValueError, match="direction"):
        kl_penalty(S, T, direction="backward")
    with pytest.raises(ValueError, match="temperature"):
        kl_penalty(S, T, temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        kl_penalty(S, T[:, :3])
