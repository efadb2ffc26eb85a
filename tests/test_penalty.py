"""kl_penalty against hand-computed values, and its scaling laws."""

import math

import pytest
import torch
import torch.nn.functional as F

from forgetting import kl_penalty, train_epoch_kl_reg
from forgetting.penalty import grouped_kl_penalty, padded_teacher_kl

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


@pytest.mark.parametrize("direction", ["reverse", "symmetric"])
def test_grouped_penalty_is_the_mean_over_groups_with_the_options_passed_on(direction):
    """Groups as lists, tensors or None (every output): each group's KL by hand, options reach every one."""
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    per = {}
    for name, cols in (("ab", [0, 1]), ("cd", [2, 3])):
        a = [[row[c] for c in cols] for row in STUDENT]
        b = [[row[c] for c in cols] for row in TEACHER]
        fwd = sum(kl(softmax(y, 2.0), softmax(x, 2.0)) for x, y in zip(a, b)) / 3
        rev = sum(kl(softmax(x, 2.0), softmax(y, 2.0)) for x, y in zip(a, b)) / 3
        per[name] = {"reverse": rev, "symmetric": (fwd + rev) / 2}[direction] * 4
    opts = {"direction": direction, "temperature": 2.0}
    expected = (per["ab"] + per["cd"]) / 2
    assert grouped_kl_penalty(s, t, [[0, 1], [2, 3]], **opts).item() == pytest.approx(expected, rel=1e-5)
    assert grouped_kl_penalty(s, t, [torch.tensor([0, 1]), (2, 3)], **opts).item() == pytest.approx(expected, rel=1e-5)
    assert grouped_kl_penalty(s, t, [[2, 3]], **opts).item() == pytest.approx(per["cd"], rel=1e-5)
    assert grouped_kl_penalty(s, t, [None], **opts).item() == pytest.approx(hand(direction, 2.0), rel=1e-5)
    assert grouped_kl_penalty(s, t, [None, [2, 3]], **opts).item() == pytest.approx(
        (hand(direction, 2.0) + per["cd"]) / 2, rel=1e-5)


def test_train_epoch_kl_reg_takes_the_penalty_with_its_options_and_steps_on_the_total():
    """The returned parts by hand (reverse, T = 3), and the step is SGD on ce + lambda * kl."""
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    ref = torch.nn.Linear(3, 4)
    ref.load_state_dict(student.state_dict())
    parts = train_epoch_kl_reg(student, teacher, x, y, torch.optim.SGD(student.parameters(), lr=0.1),
                               F.cross_entropy, 0.5, direction="reverse", temperature=3.0)
    with torch.no_grad():
        z, zt = ref(x).tolist(), teacher(x).tolist()
    kl_hand = sum(kl(softmax(a, 3.0), softmax(b, 3.0)) for a, b in zip(z, zt)) / 5 * 9
    ce_hand = -sum(math.log(softmax(a)[c]) for a, c in zip(z, y.tolist())) / 5
    assert parts["kl"] == pytest.approx(kl_hand, rel=1e-5) and parts["ce"] == pytest.approx(ce_hand, rel=1e-5)
    assert parts["loss"] == pytest.approx(ce_hand + 0.5 * kl_hand, rel=1e-5)
    loss = F.cross_entropy(ref(x), y) + 0.5 * kl_penalty(ref(x), teacher(x).detach(), direction="reverse",
                                                          temperature=3.0)
    loss.backward()
    for p, r in zip(student.parameters(), ref.parameters()):
        assert torch.allclose(p, r - 0.1 * r.grad, atol=1e-6)


def test_padded_teacher_kl_by_hand_at_its_default_temperature_and_its_shape_errors():
    """KL(p_teacher padded with zeros || p_student) = sum_j p_j (log p_j - log q_pos(j)), batchmean, T = 1."""
    s = torch.tensor(STUDENT)  # 4 student outputs; the teacher knew outputs 2 and 0 (in that order)
    t = torch.tensor([[1.0, -1.0], [0.5, 2.0], [-3.0, 0.0]])
    expected = sum(sum(p * math.log(p / softmax(row)[pos]) for p, pos in zip(softmax(tr), (2, 0)))
                   for row, tr in zip(STUDENT, t.tolist())) / 3
    assert padded_teacher_kl(s, t, torch.tensor([2, 0])).item() == pytest.approx(expected, rel=1e-5)
    at2 = sum(sum(p * math.log(p / softmax(row, 2.0)[pos]) for p, pos in zip(softmax(tr, 2.0), (2, 0)))
              for row, tr in zip(STUDENT, t.tolist())) / 3 * 4  # both softened by T = 2, times T^2
    assert padded_teacher_kl(s, t, torch.tensor([2, 0]), temperature=2.0).item() == pytest.approx(at2, rel=1e-5)
    with pytest.raises(ValueError, match=r"shapes do not match: student \(3, 4\), teacher \(2, 2\), 2 teacher"):
        padded_teacher_kl(s, t[:2], torch.tensor([2, 0]))  # batch sizes differ
    with pytest.raises(ValueError, match=r"student \(3, 4\), teacher \(3, 2\), 3 teacher positions"):
        padded_teacher_kl(s, t, torch.tensor([2, 0, 1]))  # positions do not match the teacher's outputs
