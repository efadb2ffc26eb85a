"""The token-level KL penalty of causal LMs against a float64 hand computation, with padding and prompts."""

from __future__ import annotations

import math

import pytest
import torch

from forgetting.objectives.causal_lm import loss_mask, shifted, token_loss
from forgetting.penalty import token_kl_penalty, token_kl_sum
from forgetting.streams.base import concat_inputs


def hand_kl(student, teacher, labels, direction, T):
    """Mean over (example, position) with labels[b, i+1] != -100 of KL at position i, in float64 loops."""
    total, n = 0.0, 0
    B, L, V = student.shape
    for b in range(B):
        for i in range(L - 1):
            if int(labels[b, i + 1]) == -100:
                continue
            s = [float(x) / T for x in student[b, i]]
            t = [float(x) / T for x in teacher[b, i]]
            zs, zt = math.log(sum(math.exp(x) for x in s)), math.log(sum(math.exp(x) for x in t))
            ls, lt = [x - zs for x in s], [x - zt for x in t]
            fwd = sum(math.exp(a) * (a - c) for a, c in zip(lt, ls))
            rev = sum(math.exp(c) * (c - a) for a, c in zip(lt, ls))
            total += {"forward": fwd, "reverse": rev, "symmetric": 0.5 * (fwd + rev)}[direction] * T * T
            n += 1
    return total / n


def batch(seed=0, pad_to=9, vocab=11):
    """Three sequences: an lm text (loss on every token), a prompt + response, a short one; right-padded."""
    g = torch.Generator().manual_seed(seed)
    lengths, prompt = [7, 8, 4], [0, 4, 0]  # prompt tokens after <bos>
    labels = torch.full((3, pad_to), -100)
    for b, (n, p) in enumerate(zip(lengths, prompt)):
        labels[b, 1 + p : n] = torch.randint(vocab, (n - 1 - p,), generator=g)
    student = torch.randn(3, pad_to, vocab, generator=g) * 2
    teacher = torch.randn(3, pad_to, vocab, generator=g) * 2
    return student, teacher, labels


@pytest.mark.parametrize("direction", ["forward", "reverse", "symmetric"])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_token_kl_equals_float64_hand_computation(direction, T):
    student, teacher, labels = batch()
    s, _ = shifted(student, labels)
    t, _ = shifted(teacher, labels)
    got = token_kl_penalty(s, t, loss_mask(labels), direction=direction, temperature=T)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(hand_kl(student.double(), teacher.double(), labels, direction, T), rel=1e-5)
    # one position per chunk gives the same value
    small = token_kl_penalty(s, t, loss_mask(labels), direction=direction, temperature=T, chunk_floats=1)
    assert small.item() == pytest.approx(got.item(), rel=1e-6)


def test_padding_and_prompt_positions_contribute_nothing():
    student, teacher, labels = batch()
    mask = loss_mask(labels)
    value = token_kl_penalty(shifted(student, labels)[0], shifted(teacher, labels)[0], mask)
    # anything at positions that carry no loss (prompt, padding, the last position) changes nothing
    noisy_s, noisy_t = student.clone(), teacher.clone()
    off = torch.ones_like(student[..., 0], dtype=torch.bool)
    off[:, :-1] = ~mask
    noisy_s[off] = 100.0 * torch.randn_like(noisy_s[off])
    noisy_t[off] = -50.0
    again = token_kl_penalty(shifted(noisy_s, labels)[0], shifted(noisy_t, labels)[0], mask)
    assert torch.equal(value, again)
    # the same examples padded to a longer length (garbage logits on the padding): the same mean
    pad = 5
    longer_l = torch.cat([labels, torch.full((3, pad), -100)], 1)
    longer_s = torch.cat([student, torch.randn(3, pad, student.shape[-1]) * 9], 1)
    longer_t = torch.cat([teacher, torch.randn(3, pad, teacher.shape[-1]) * 9], 1)
    padded = token_kl_penalty(shifted(longer_s, longer_l)[0], shifted(longer_t, longer_l)[0], loss_mask(longer_l))
    assert padded.item() == pytest.approx(value.item(), rel=1e-6)


def test_chunked_gradient_equals_unchunked_and_nothing_masked_is_zero():
    student, teacher, labels = batch(seed=3)
    grads = []
    for chunk in (2**22, 11, 1):
        s = student.clone().requires_grad_(True)
        token_kl_penalty(shifted(s, labels)[0], shifted(teacher, labels)[0], loss_mask(labels),
                         chunk_floats=chunk).backward()
        grads.append(s.grad)
        assert torch.all(s.grad[:, -1] == 0)  # the last position predicts nothing
    assert torch.allclose(grads[0], grads[1], atol=1e-7) and torch.allclose(grads[0], grads[2], atol=1e-7)
    none = torch.full_like(labels, -100)
    s = student.clone().requires_grad_(True)
    zero = token_kl_penalty(shifted(s, none)[0], shifted(teacher, none)[0], loss_mask(none))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.all(s.grad == 0)


def test_token_loss_is_the_mean_over_tokens_that_carry_loss():
    student, _, labels = batch(seed=5)
    logp = torch.log_softmax(student.double(), -1)
    nll = [-float(logp[b, i, labels[b, i + 1]]) for b in range(3) for i in range(student.shape[1] - 1)
           if labels[b, i + 1] != -100]
    assert token_loss(student, labels).item() == pytest.approx(sum(nll) / len(nll), rel=1e-6)


def test_replayed_labels_are_padded_with_the_ignore_index():
    a = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
         "labels": torch.full((2, 3), 7)}
    b = {"input_ids": torch.ones(1, 5, dtype=torch.long), "attention_mask": torch.ones(1, 5, dtype=torch.long),
         "labels": torch.full((1, 5), 7)}
    joined = concat_inputs([a, b])
    assert joined["labels"].shape == (3, 5)
    assert torch.all(joined["labels"][:2, 3:] == -100) and torch.all(joined["attention_mask"][:2, 3:] == 0)


def test_one_masked_position_its_kl_and_the_default_temperature_is_one():
    """The mean over one position is that position's KL (T = 1 when not given)."""
    student, teacher, labels = batch(seed=7)
    one = torch.full_like(labels, -100)
    one[1, 6] = labels[1, 6]  # only position 5 of example 1 carries loss
    value = token_kl_penalty(shifted(student, one)[0], shifted(teacher, one)[0], loss_mask(one))
    assert value.item() == pytest.approx(hand_kl(student, teacher, one, "forward", 1.0), rel=1e-5)


def test_chunks_go_through_activation_checkpointing_when_a_gradient_is_needed(monkeypatch):
    """``chunk_floats`` bounds the memory: each chunk of positions is one checkpointed call (same value)."""
    import torch.utils.checkpoint as ckpt

    calls = []
    original = ckpt.checkpoint
    monkeypatch.setattr(ckpt, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    student, teacher, labels = batch(seed=3)
    n = int(loss_mask(labels).sum())
    s = student.clone().requires_grad_(True)
    token_kl_penalty(shifted(s, labels)[0], shifted(teacher, labels)[0], loss_mask(labels), chunk_floats=11 * 4)
    assert len(calls) == math.ceil(n / 4)
    calls.clear()  # a chunk of one position (11 floats): one call per position
    token_kl_penalty(shifted(s, labels)[0], shifted(teacher, labels)[0], loss_mask(labels), chunk_floats=11)
    assert len(calls) == n
    calls.clear()  # no gradient needed (evaluation): nothing to recompute, no checkpoint
    with torch.no_grad():
        token_kl_penalty(shifted(s, labels)[0], shifted(teacher, labels)[0], loss_mask(labels), chunk_floats=11)
    token_kl_penalty(shifted(student, labels)[0], shifted(teacher, labels)[0], loss_mask(labels), chunk_floats=11)
    assert calls == []


def test_token_kl_sum_counts_the_masked_positions_and_refuses_shapes_that_differ():
    student, teacher, labels = batch(seed=2)
    total, n = token_kl_sum(shifted(student, labels)[0], shifted(teacher, labels)[0], loss_mask(labels))
    assert n == int(loss_mask(labels).sum()) and total.item() / n == pytest.approx(
        hand_kl(student, teacher, labels, "forward", 1.0), rel=1e-5)
    none = torch.full_like(labels, -100)
    total, n = token_kl_sum(shifted(student, none)[0], shifted(teacher, none)[0], loss_mask(none))
    assert (total.item(), n) == (0.0, 0)
    s, t, m = shifted(student, labels)[0], shifted(teacher, labels)[0], loss_mask(labels)
    with pytest.raises(ValueError, match=r"differ in shape: \(3, 8, 11\) vs \(3, 8, 10\)"):
        token_kl_sum(s, t[..., :10], m)
    with pytest.raises(ValueError, match=r"mask shape \(3, 7\) does not match logits \(3, 8, 11\)"):
        token_kl_sum(s, t, m[:, :7])


@pytest.mark.parametrize("direction", ["forward", "reverse", "symmetric"])
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_token_kl_estimate_is_the_estimator_at_the_masked_tokens_times_t_squared(estimator, direction):
    """float64 by hand, one position at a time: P = the teacher (forward) or the student (reverse), log P(a) − log Q(a)
    at the observed token a, k1 = r, k2 = r²/2, k3 = e^(−r) + r − 1, averaged over the masked positions, × T²."""
    from forgetting.penalty import token_kl_estimate

    g = torch.Generator().manual_seed(3)
    student = (torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 2).requires_grad_()
    teacher = torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 2
    tokens = torch.tensor([[4, 0, 2], [1, 3, 3]])
    mask = torch.tensor([[True, False, True], [False, True, True]])
    T = 2.0
    k = {"k1": lambda r: r, "k2": lambda r: 0.5 * r * r, "k3": lambda r: math.exp(-r) + r - 1.0}[estimator]
    values = []
    for b in range(2):
        for j in range(3):
            if not mask[b, j]:
                continue
            a = int(tokens[b, j])
            ls = float(torch.log_softmax(student[b, j].detach() / T, 0)[a])
            lt = float(torch.log_softmax(teacher[b, j] / T, 0)[a])
            parts = {"forward": [k(lt - ls)], "reverse": [k(ls - lt)], "symmetric": [k(lt - ls), k(ls - lt)]}
            values.append(sum(parts[direction]) / len(parts[direction]))
    expected = sum(values) / len(values) * T * T
    got = token_kl_estimate(student, teacher, tokens, mask, estimator=estimator, direction=direction, temperature=T)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    got.backward()
    assert student.grad[~mask].abs().sum() == 0
    if (estimator, direction) != ("k1", "symmetric"):  # there r and −r cancel: 0 and no gradient, rightly
        assert student.grad[mask].abs().sum() > 0 and abs(expected) > 0.05


def test_token_kl_estimate_exact_is_the_penalty_and_an_empty_mask_is_a_zero_in_the_graph():
    from forgetting.penalty import token_kl_estimate

    g = torch.Generator().manual_seed(4)
    student = torch.randn(1, 4, 6, generator=g, requires_grad=True)
    teacher = torch.randn(1, 4, 6, generator=g)
    tokens = torch.zeros(1, 4, dtype=torch.long)
    mask = torch.tensor([[True, False, True, True]])
    for direction in ("forward", "reverse"):
        assert torch.equal(token_kl_estimate(student, teacher, tokens, mask, estimator="exact", direction=direction,
                                             temperature=2.0),
                           token_kl_penalty(student, teacher, mask, direction=direction, temperature=2.0))
    none = token_kl_estimate(student, teacher, tokens, torch.zeros_like(mask), estimator="k3")
    assert float(none) == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="'k4'"):
        token_kl_estimate(student, teacher, tokens, mask, estimator="k4")
    with pytest.raises(ValueError, match="temperature"):
        token_kl_estimate(student, teacher, tokens, mask, estimator="k1", temperature=0.0)
    # the defaults: the forward direction at temperature 1 (k1 = log P(a) − log Q(a), P the teacher), by hand
    ls, lt = torch.log_softmax(student.detach().double(), -1), torch.log_softmax(teacher.double(), -1)
    hand = float(sum(lt[0, j, 0] - ls[0, j, 0] for j in (0, 2, 3)) / 3)
    assert float(token_kl_estimate(student, teacher, tokens, mask, estimator="k1")) == pytest.approx(hand, rel=1e-5)
