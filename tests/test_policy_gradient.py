"""The group-relative policy-gradient loss against a hand-computed REINFORCE gradient (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from forgetting.policy_gradient import group_advantages, pg_loss, sample_answers


def hand_grad(theta, answers, rewards):
    """−(1/(N·G)) Σ_i Σ_g (r_ig − mean_g r_i) (e_{a_ig} − softmax(θ_i)), written out in float64 loops."""
    n, k = len(theta), len(theta[0])
    out = [[0.0] * k for _ in range(n)]
    total = sum(len(a) for a in answers)
    for i in range(n):
        z = sum(math.exp(v) for v in theta[i])
        p = [math.exp(v) / z for v in theta[i]]
        base = sum(rewards[i]) / len(rewards[i])
        for a, r in zip(answers[i], rewards[i]):
            for c in range(k):
                out[i][c] -= (r - base) * ((1.0 if c == a else 0.0) - p[c]) / total
    return out


def test_gradient_is_reinforce_with_group_baseline():
    theta0 = [[0.3, -1.2, 0.5], [1.0, 0.0, -0.7]]
    answers = [[0, 2, 2, 1], [1, 1, 0, 2]]
    correct = [{2}, {0, 2}]  # a set of right answers per input
    rewards = [[1.0 if a in correct[i] else 0.0 for a in answers[i]] for i in range(2)]
    theta = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(theta, -1).gather(1, torch.tensor(answers))
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float64))
    pg_loss(logp, adv).backward()
    assert torch.allclose(theta.grad, torch.tensor(hand_grad(theta0, answers, rewards), dtype=torch.float64),
                          rtol=0, atol=1e-15)
    # PPO clipping on the first update after sampling (ratio 1) has the same gradient
    theta2 = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    logp2 = torch.log_softmax(theta2, -1).gather(1, torch.tensor(answers))
    pg_loss(logp2, adv, old_log_probs=logp2.detach(), clip=0.2).backward()
    assert torch.allclose(theta2.grad, theta.grad, rtol=0, atol=1e-15)


def test_all_correct_group_moves_nothing():
    theta = torch.tensor([[0.3, -1.2, 0.5]], dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(theta, -1).gather(1, torch.tensor([[0, 2, 0, 2]]))
    adv = group_advantages(torch.ones(1, 4, dtype=torch.float64), scale_by_std=True)
    assert torch.equal(adv, torch.zeros(1, 4, dtype=torch.float64))
    pg_loss(logp, adv).backward()
    assert torch.equal(theta.grad, torch.zeros_like(theta))


def test_std_scaling_and_token_mask():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    adv = group_advantages(r, scale_by_std=True, eps=0.0)
    std = math.sqrt(0.75 * 0.25)  # population std of one 1 among four
    assert torch.allclose(adv, torch.tensor([[0.75, -0.25, -0.25, -0.25]], dtype=torch.float64) / std, atol=1e-15)
    # completions: mean over the answers' tokens only; padding tokens carry nothing
    logp = torch.tensor([[[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]]], dtype=torch.float64)
    mask = torch.tensor([[[True, True, False], [True, False, False]]])
    a = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    expected = -((2.0 * -1.0) + (2.0 * -2.0) + (-1.0 * -0.5)) / 3
    assert float(pg_loss(logp, a, mask)) == pytest.approx(expected, abs=1e-15)


def test_clipping_caps_the_ratio():
    logp = torch.tensor([[math.log(0.9), math.log(0.1)]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[math.log(0.5), math.log(0.5)]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    loss = pg_loss(logp, adv, old_log_probs=old, clip=0.2)
    # ratio 1.8 with A>0 clipped to 1.2; ratio 0.2 with A<0: min(-0.2, -0.8) = -0.8 (clipped, no gradient)
    assert float(loss.detach()) == pytest.approx(-(1.2 - 0.8) / 2, abs=1e-12)
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))


def test_sampling_is_seeded_and_respects_allowed_outputs():
    logits = torch.tensor([[0.0, 0.0, 5.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    allowed = torch.tensor([True, True, False, True])
    a = sample_answers(logits, 64, torch.Generator().manual_seed(3), allowed=allowed)
    b = sample_answers(logits, 64, torch.Generator().manual_seed(3), allowed=allowed)
    assert a.shape == (2, 64) and torch.equal(a, b) and not (a == 2).any()


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match="disagree"):
        pg_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_advantages_per_group_by_hand_with_and_without_std_scaling():
    """Each input's group is centred (and scaled) by its own mean and population std, + eps = 1e-6; G = 2 is allowed."""
    r = torch.tensor([[1.0, 0.0, 0.0], [3.0, 0.0, 3.0]], dtype=torch.float64)
    assert torch.allclose(group_advantages(r), torch.tensor([[2 / 3, -1 / 3, -1 / 3], [1.0, -2.0, 1.0]],
                                                            dtype=torch.float64), rtol=0, atol=1e-15)
    std = [math.sqrt(2 / 9), math.sqrt(2.0)]  # population std of each group
    by_hand = [[2 / 3 / (std[0] + 1e-6), -1 / 3 / (std[0] + 1e-6), -1 / 3 / (std[0] + 1e-6)],
               [1 / (std[1] + 1e-6), -2 / (std[1] + 1e-6), 1 / (std[1] + 1e-6)]]
    assert torch.allclose(group_advantages(r, scale_by_std=True), torch.tensor(by_hand, dtype=torch.float64),
                          rtol=1e-12, atol=0)
    two = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(group_advantages(two, scale_by_std=True),
                          torch.tensor([[0.5 / 0.500001, -0.5 / 0.500001]], dtype=torch.float64), rtol=1e-12, atol=0)


def test_loss_by_hand_one_token_clipping_without_old_log_probs_and_the_log_probs_dtype():
    """One masked token: its −A·log π alone (not halved); clipping with no old log-probabilities is the unclipped
    surrogate at ρ = 1, −mean(A); the loss keeps the log-probabilities' dtype (advantages are cast to it)."""
    lp = torch.tensor([[[-0.5, -2.0], [-1.0, -3.0]]], dtype=torch.float64)  # [1 input, G = 2, 2 tokens]
    adv = torch.tensor([[0.75, -0.25]], dtype=torch.float64)
    mask = torch.tensor([[[True, False], [False, False]]])
    assert float(pg_loss(lp, adv, mask)) == -(0.75 * -0.5)
    full = torch.ones_like(mask)
    by_hand = -(0.75 * (-0.5 - 2.0) - 0.25 * (-1.0 - 3.0)) / 4
    assert float(pg_loss(lp, adv, full)) == pytest.approx(by_hand, rel=1e-15)
    assert float(pg_loss(lp, adv, full, clip=0.2)) == -(0.75 * 2 - 0.25 * 2) / 4  # −mean(ρ·A), ρ = 1
    assert pg_loss(lp.half(), adv.float(), full).dtype == torch.float16


def test_clip_and_mask_refusals_name_the_values():
    lp, adv = torch.zeros(1, 2, 3), torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"^clip must be above 0, got 0.0$"):
        pg_loss(lp, adv, clip=0.0)
    with pytest.raises(ValueError, match=r"^mask \(1, 2, 2\) does not match log_probs \(1, 2, 3\)$"):
        pg_loss(lp, adv, torch.ones(1, 2, 2, dtype=torch.bool))


def test_sampling_is_from_the_softmax_at_the_temperature_default_1():
    """The draw is multinomial(softmax(logits / T)) from the generator as given: by hand at T = 0.5, and the default
    is T = 1."""
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, -2.0]])
    hand = torch.multinomial(torch.softmax(logits / 0.5, -1), 32, replacement=True,
                             generator=torch.Generator().manual_seed(5))
    assert torch.equal(sample_answers(logits, 32, torch.Generator().manual_seed(5), temperature=0.5), hand)
    assert torch.equal(sample_answers(logits, 32, torch.Generator().manual_seed(5)),
                       sample_answers(logits, 32, torch.Generator().manual_seed(5), temperature=1.0))
    assert not torch.equal(sample_answers(logits, 32, torch.Generator().manual_seed(5), temperature=2.0),
                           sample_answers(logits, 32, torch.Generator().manual_seed(5), temperature=1.0))
