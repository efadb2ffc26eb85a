"""EWC's diagonal Fisher of a causal LM on a two-sequence toy, against a hand computation.

The Fisher is the mean over sequences of the squared gradient of log p(y|x), y the sequence's
response tokens (their log-probabilities summed): ``empirical`` takes the data's tokens, ``true``
one token drawn from the model's next-token distribution at each response position (a generator
seeded with 1000 + task, so runs repeat). Per-sequence squares, not the square of a summed gradient.
"""

from __future__ import annotations

import pytest
import torch

from forgetting.registry import build_methods, build_model
from forgetting.objectives.causal_lm import LMData
from forgetting.train import Trainer

from test_lm import TINY, config, pairs_stream

PROMPTS = [[104, 105, 32], [120]]  # "hi ", "x"
RESPONSES = [[49, 50, 256], [51, 52, 53, 54, 256]]  # "12<eos>", "3456<eos>"


def ewc_trainer(tmp_path, labels: str):
    stream = pairs_stream(tmp_path)
    stream.tasks[0].train = LMData(PROMPTS, RESPONSES, torch.zeros(2), stream.tokenizer)
    torch.manual_seed(0)
    model = build_model("gpt2", stream, TINY)
    with torch.no_grad():  # a confident model: sampled tokens and the data's differ, and gradients are large
        model.lm.lm_head.weight.mul_(20.0)
    cfg = config("ewc", ewc_fisher=labels)
    return Trainer(cfg, stream, model, build_methods("ewc", cfg.hparams), torch.device("cpu"))


def hand_fisher(model, tokenizer, labels: str, task: int = 0) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    gen = torch.Generator().manual_seed(1000 + task)
    model.eval()
    for prompt, response in zip(PROMPTS, RESPONSES):
        ids = torch.tensor([[tokenizer.eos_token_id, *prompt, *response]])
        if labels == "empirical":  # Hugging Face's own loss: the mean NLL of the labelled tokens
            lab = torch.full_like(ids, -100)
            lab[0, 1 + len(prompt):] = torch.tensor(response)
            ll = -model.lm(input_ids=ids, labels=lab).loss * len(response)
        else:  # the response positions' next-token distributions, one token drawn from each
            logits = model.lm(input_ids=ids).logits[0, len(prompt): len(prompt) + len(response)]
            logp = torch.log_softmax(logits.double(), -1)
            y = torch.multinomial(logp.detach().exp().float(), 1, generator=gen).squeeze(1)
            assert not torch.equal(y, torch.tensor(response))
            ll = logp[torch.arange(len(y)), y].sum()
        grads = torch.autograd.grad(ll, list(params.values()), allow_unused=True)
        for (n, _), g in zip(params.items(), grads):
            if g is not None:
                total[n] += g.double() ** 2
    return {n: t / len(PROMPTS) for n, t in total.items()}


@pytest.mark.parametrize("labels", ["empirical", "true"])
def test_lm_fisher_is_the_mean_of_per_sequence_squared_gradients(tmp_path, labels):
    tr = ewc_trainer(tmp_path, labels)
    ewc = tr.methods[0]
    ewc.after_task(tr, 0)
    (term,) = ewc.state_dict()["consolidated"]
    fisher = term["fisher"]
    expected = hand_fisher(tr.model, tr.stream.tokenizer, labels)
    assert fisher.keys() == expected.keys()
    assert sum(float(v.sum()) for v in expected.values()) > 1.0
    for name, e in expected.items():
        assert torch.allclose(fisher[name].double(), e, rtol=1e-4, atol=1e-6 * float(e.abs().max()) + 1e-12), name


def test_lm_fisher_labels_matter_and_squares_are_per_sequence(tmp_path):
    """The two Fishers differ, and neither is the square of the two sequences' summed gradient."""
    fishers = {}
    for labels in ("empirical", "true"):
        tr = ewc_trainer(tmp_path, labels)
        tr.methods[0].after_task(tr, 0)
        fishers[labels] = tr.methods[0].state_dict()["consolidated"][0]["fisher"]
    total = sum(float(v.sum()) for v in fishers["empirical"].values())
    gap = sum(float((fishers["empirical"][n] - fishers["true"][n]).abs().sum()) for n in fishers["empirical"])
    assert gap > 0.1 * total
    # (g1 + g2)^2 / 2 differs from (g1^2 + g2^2) / 2 by g1 g2: far from zero for these two sequences
    model = tr.model
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    per_seq = []
    for prompt, response in zip(PROMPTS, RESPONSES):
        ids = torch.tensor([[tr.stream.tokenizer.eos_token_id, *prompt, *response]])
        lab = torch.full_like(ids, -100)
        lab[0, 1 + len(prompt):] = torch.tensor(response)
        per_seq.append(torch.autograd.grad(-model.lm(input_ids=ids, labels=lab).loss * len(response),
                                           list(params.values()), allow_unused=True))
    cross = sum(float((a * b).abs().sum()) for a, b in zip(*per_seq) if a is not None and b is not None)
    assert cross > 0.1 * total
