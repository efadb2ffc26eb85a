"""The sampled KL estimators k1, k2, k3 against hand values and exact KLs on a small vocabulary (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from forgetting.kl_estimators import ESTIMATORS, exact_kl, expectation, sampled_kl
from forgetting.penalty import kl_penalty

P = [0.5, 0.3, 0.15, 0.05]
Q = [0.25, 0.25, 0.25, 0.25]


def hand_kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_per_sample_values_by_hand():
    log_p = torch.tensor([math.log(0.5), math.log(0.05)], dtype=torch.float64)
    log_q = torch.tensor([math.log(0.25), math.log(0.25)], dtype=torch.float64)
    r = [math.log(0.5 / 0.25), math.log(0.05 / 0.25)]  # log P(a) - log Q(a)
    assert torch.allclose(sampled_kl(log_p, log_q, "k1"), torch.tensor(r, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.allclose(sampled_kl(log_p, log_q, "k2"), torch.tensor([0.5 * x * x for x in r], dtype=torch.float64),
                          rtol=0, atol=1e-15)
    k3 = [0.25 / 0.5 + r[0] - 1, 0.25 / 0.05 + r[1] - 1]  # Q/P - 1 - log(Q/P)
    assert torch.allclose(sampled_kl(log_p, log_q, "k3"), torch.tensor(k3, dtype=torch.float64), rtol=0, atol=1e-14)
    assert (sampled_kl(log_p, log_q, "k3") >= 0).all() and sampled_kl(log_p, log_q, "k1")[1] < 0


def test_closed_form_expectations_by_hand():
    lp, lq = torch.tensor(P, dtype=torch.float64).log(), torch.tensor(Q, dtype=torch.float64).log()
    kl = hand_kl(P, Q)
    for name in ("exact", "k1", "k3"):
        assert float(expectation(lp, lq, name)) == pytest.approx(kl, abs=1e-15)
    assert float(expectation(lp, lq, "k2")) == pytest.approx(sum(a * 0.5 * math.log(a / b) ** 2 for a, b in zip(P, Q)),
                                                             abs=1e-15)
    # exact_kl(P, Q) is what the harness's penalty calls reverse when P is the student, forward when P is the teacher
    student, teacher = lp.unsqueeze(0), lq.unsqueeze(0)
    assert float(kl_penalty(student, teacher, direction="reverse")) == pytest.approx(kl, rel=1e-6)
    assert float(kl_penalty(teacher, student, direction="forward")) == pytest.approx(kl, rel=1e-6)
    assert float(exact_kl(lp, lq)) != pytest.approx(hand_kl(Q, P), rel=1e-3)  # the direction matters here


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_sample_mean_matches_expectation_within_standard_error(estimator):
    """Samples from the student P: k1 and k3 average to KL(P‖Q) (the reverse KL of the penalty), k2 to ½E[log²]."""
    g = torch.Generator().manual_seed(1234)
    lp, lq = torch.tensor(P, dtype=torch.float64).log(), torch.tensor(Q, dtype=torch.float64).log()
    a = torch.multinomial(lp.exp(), 200_000, replacement=True, generator=g)
    values = sampled_kl(lp[a], lq[a], estimator)
    mean, se = float(values.mean()), float(values.std()) / math.sqrt(len(values))
    target = float(expectation(lp, lq, estimator))
    assert abs(mean - target) < 4 * se, (estimator, mean, target, se)
    if estimator != "k2":  # unbiased for the KL of the student to the reference, not for the other direction
        assert abs(mean - hand_kl(Q, P)) > 10 * se


def test_k2_is_second_order_close_to_kl():
    """k2's bias shrinks faster than the KL itself as the distributions meet (third order in their distance)."""
    lq = torch.tensor(Q, dtype=torch.float64).log()
    step = torch.tensor([1.0, -0.5, 0.3, -0.8], dtype=torch.float64)
    ratios = []
    for eps in (0.2, 0.1, 0.05):
        lp = torch.log_softmax(lq + eps * step, -1)
        kl, k2 = float(expectation(lp, lq, "k1")), float(expectation(lp, lq, "k2"))
        ratios.append(abs(k2 - kl) / kl)
    assert ratios[0] > ratios[1] > ratios[2] and ratios[2] < 0.05


def test_unknown_estimator_is_named():
    with pytest.raises(ValueError, match="'k4'.*exact, k1, k2, k3"):
        expectation(torch.zeros(2), torch.zeros(2), "k4")
    with pytest.raises(ValueError, match="'exact'"):
        sampled_kl(torch.zeros(2), torch.zeros(2), "exact")
    assert ESTIMATORS == ("exact", "k1", "k2", "k3")


def test_one_value_per_leading_index_and_the_sampled_ones_named():
    """Over a batch of distributions [2, V] the closed forms give one KL per row (by hand, float64), not their sum;
    a sampled estimator's refusal lists the sampled ones."""
    lp = torch.tensor([P, Q], dtype=torch.float64).log()
    lq = torch.tensor([Q, P], dtype=torch.float64).log()
    by_hand = torch.tensor([hand_kl(P, Q), hand_kl(Q, P)], dtype=torch.float64)
    assert torch.allclose(exact_kl(lp, lq), by_hand, rtol=0, atol=1e-15)
    assert torch.allclose(expectation(lp, lq, "k3"), by_hand, rtol=0, atol=1e-15)
    k2 = [sum(a * 0.5 * math.log(a / b) ** 2 for a, b in zip(x, y)) for x, y in ((P, Q), (Q, P))]
    assert torch.allclose(expectation(lp, lq, "k2"), torch.tensor(k2, dtype=torch.float64), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"^unknown sampled KL estimator 'exact': allowed are k1, k2, k3$"):
        sampled_kl(torch.zeros(2), torch.zeros(2), "exact")
