"""The HF and TRL bridges under ``accelerate launch`` on 2 CPU processes (gloo, DDP) give the training of one
process at the same global batch (tests/hf_launched_driver.py: ``KLRegularizedTrainer`` on a classifier and on a
causal LM, ``KLRegularizedSFTTrainer`` with gradient accumulation), with the reference untouched on every rank.

Tolerance: the trained weights within 1e-5 absolute and the logged loss, ce and kl within 1e-5 relative. DDP sums
the two ranks' gradients of their halves of the batch where one process takes the gradient of the whole batch:
the same float32 terms added in another order, a few units in the last place per step (1.5e-6 seen on the
weights after 2-3 steps at learning rate 1e-2). The causal LMs' examples have responses of 1 to 3 words, so the
ranks hold different token counts: a per-rank token mean averaged over the ranks (what KLRegularizedTrainer did
before it weighed each batch by its share of ``num_items_in_batch``) leaves the GPT-2 weights 3e-2 away.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl", reason="TRL's SFTTrainer (the [lm] extra)")
from hf_launched_driver import train  # noqa: E402
from test_distributed import ROOT, launch  # noqa: E402

KINDS = ("hf", "hf-lm", "trl")


def test_the_bridges_on_two_processes_train_as_one_with_the_reference_untouched(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    proc = launch([str(ROOT / "tests" / "hf_launched_driver.py"), str(two), *KINDS])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind in KINDS:
        train(kind, one, 1)
        for rank in range(2):  # every rank: its own frozen reference, never wrapped, not moved by a bit
            state = json.loads((two / f"{kind}-ref-rank{rank}.json").read_text())
            assert state == {"bitwise_unchanged": True, "eval_mode": True, "no_grad": True, "not_wrapped": True,
                             "model_wrapped": True}, (kind, rank, state)
        logs1, logs2 = (json.loads((d / f"{kind}-logs.json").read_text()) for d in (one, two))
        assert len(logs1) == len(logs2) >= 2 and [h["step"] for h in logs1] == [h["step"] for h in logs2]
        for a, b in zip(logs1, logs2):
            assert a["kl"] > 1e-3  # the penalty is in the step
            for key in ("loss", "ce", "kl"):
                assert b[key] == pytest.approx(a[key], rel=1e-5), (kind, key, a, b)
            assert a["loss"] == pytest.approx(a["ce"] + 0.5 * a["kl"], rel=1e-5)  # the logs add up to the loss
        (w1, moved), (w2, _) = ((r["weights"], r["moved"]) for r in (torch.load(d / f"{kind}-weights.pt")
                                                                        for d in (one, two)))
        assert moved > 1e-3  # the steps moved the weights
        assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) <= 1e-5, kind


def test_the_batch_weight_is_the_share_of_the_step_times_the_processes():
    """What each rank multiplies its batch's mean loss by, in float64: summed over the ranks and divided by the
    processes (DDP's average), the shares of uneven token counts make the mean over every token of the step."""
    from types import SimpleNamespace

    from forgetting.integrations.hf import KLPenaltyMixin

    rank_tokens = torch.tensor([7.0, 3.0], dtype=torch.float64)  # one step, two ranks, uneven counts
    means = torch.tensor([2.0, 5.0], dtype=torch.float64)  # each rank's token-mean loss
    bridge = KLPenaltyMixin.__new__(KLPenaltyMixin)
    bridge.args = SimpleNamespace(average_tokens_across_devices=True)
    bridge.accelerator = SimpleNamespace(num_processes=2)
    bridge.get_tp_size = lambda: 1
    weights = [bridge.batch_weight(n, rank_tokens.sum()) for n in rank_tokens]
    averaged = sum(m * w for m, w in zip(means, weights)) / 2
    assert float(averaged) == pytest.approx((7 * 2.0 + 3 * 5.0) / 10, abs=1e-15)  # not (2 + 5) / 2
    assert bridge.batch_weight(torch.tensor(4.0), None) == 1.0  # no count: the Trainer divides by accumulation
    bridge.args.average_tokens_across_devices = False
    assert float(bridge.batch_weight(torch.tensor(3.0), torch.tensor(6.0))) == 0.5
