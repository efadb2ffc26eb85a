"""The drift metric ``kl_base`` of the rows a run writes, against float64 hand computations.

``kl_base`` is KL(p_base || p_current), forward, a mean per example (``batchmean``) for classifiers
over the outputs the task is evaluated on in its scenario, and a mean per token for causal LMs
over the tokens that carry loss (not the prompt, not the padding). The models here differ sharply
(logits of a few nats), so a reversed direction, a ``mean`` over outputs, the wrong outputs or the
wrong tokens change the value by far more than the tolerance. The rows come from
``Trainer.record``, the call the loop makes at each evaluation point.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from forgetting.registry import build_methods, make_config
from forgetting.streams.splits import class_split_stream
from forgetting.teacher import frozen_copy
from forgetting.train import Trainer


def tiny_stream(scenario: str):
    """3 tasks of 2 classes, 4 features; 7 test examples per class (the evaluator's batches of 5 cut across)."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 7)
    x = rng.normal(size=(len(y), 4)).astype(np.float32)
    return class_split_stream("tiny", scenario, x, y, x, y, [(0, 1), (2, 3), (4, 5)], (4,))


def sharp_linear(n_out: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Linear(4, n_out)
    with torch.no_grad():
        m.weight.mul_(8.0)
        m.bias.normal_(0.0, 2.0)
    return m


def classifier_trainer(scenario: str):
    stream = tiny_stream(scenario)
    config = make_config(scenario=scenario, method="naive", eval_batch_size=5, progress=False, device="cpu")
    model = sharp_linear(stream.layout.n_outputs, 1)
    tr = Trainer(config, stream, model, build_methods("naive", config.hparams), torch.device("cpu"))
    tr.base_model = frozen_copy(sharp_linear(stream.layout.n_outputs, 2))
    return tr


def hand_kl(base_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """mean over rows of sum_j p_j (log p_j - log q_j), p from the base, q from the current model (float64)."""
    p = torch.softmax(base_logits.double(), 1)
    log_p, log_q = torch.log_softmax(base_logits.double(), 1), torch.log_softmax(logits.double(), 1)
    return float((p * (log_p - log_q)).sum(1).mean())


def hand_rows(tr, trained_task: int) -> list[float]:
    """kl_base of each task by hand: task -> its own head; domain -> every output; class -> the outputs of
    tasks 0..max(trained_task, k) (a task not trained yet: those it will be learned with)."""
    layout = tr.stream.layout
    out = []
    for k, task in enumerate(tr.stream.tasks):
        x = task.test.inputs
        if layout.scenario == "task":
            outs = layout.task_outputs[k]
        elif layout.scenario == "domain":
            outs = list(range(layout.n_outputs))
        else:
            outs = sorted(o for j in range(max(trained_task, k) + 1) for o in layout.task_outputs[j])
        with torch.no_grad():
            out.append(hand_kl(tr.base_model(x)[:, outs], tr.model(x)[:, outs]))
    return out


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
@pytest.mark.parametrize("trained_task", [0, 1, 2])
def test_classifier_kl_base_is_the_forward_kl_per_example_on_the_evaluated_outputs(scenario, trained_task):
    tr = classifier_trainer(scenario)
    rows = tr.record("epoch", trained_task, 1, 0.0)
    expected = hand_rows(tr, trained_task)
    assert [r["eval_task"] for r in rows] == [0, 1, 2]
    for r, e in zip(rows, expected):
        assert e > 0.5  # sharply different models: a wrong direction or reduction moves it far
        assert r["kl_base"] == pytest.approx(e, rel=1e-5), (r["eval_task"], r["kl_base"], e)
    if scenario == "class" and trained_task == 0:  # outputs 0-1 for task 0, 0-3 for task 1: different values
        assert expected[0] != pytest.approx(hand_kl(*(m(tr.stream.tasks[0].test.inputs).detach() for m in
                                                      (tr.base_model, tr.model))), rel=1e-3)


def test_classifier_kl_base_is_zero_for_the_base_itself_and_nan_without_one():
    tr = classifier_trainer("class")
    tr.model = copy.deepcopy(tr.base_model)
    assert all(r["kl_base"] == pytest.approx(0.0, abs=1e-7) for r in tr.record("epoch", 1, 1, 0.0))
    tr.base_model = None  # before the end of task 0 there is no base model: no drift is claimed
    assert all(np.isnan(r["kl_base"]) for r in tr.record("epoch", 0, 1, 0.0))


@pytest.mark.parametrize("subset", [0, 4])
def test_classifier_rows_by_hand_in_eval_mode_and_the_mode_restored(subset):
    """Accuracy, loss, chance and majority accuracy, n_eval of the task scenario's rows by hand; a dropout model
    is evaluated in eval mode and left in train mode; ``eval_subset`` takes the same examples on every call."""
    stream = tiny_stream("task")
    config = make_config(scenario="task", method="naive", eval_batch_size=5, eval_subset=subset, progress=False,
                         device="cpu")
    model = nn.Sequential(nn.Dropout(0.5), sharp_linear(6, 1))
    tr = Trainer(config, stream, model, build_methods("naive", config.hparams), torch.device("cpu"))
    tr.model.train()
    rows = tr.record("epoch", 1, 1, 0.0)
    again = tr.record("epoch", 1, 1, 0.0)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "kl_base"} for r in rs]  # noqa: E731 (NaN: no base)
    assert tr.model.training and strip(rows) == strip(again)
    g = torch.Generator().manual_seed(12345)  # one fixed draw per task, in task order
    for k, r in enumerate(rows):
        data, outs = stream.tasks[k].test, stream.layout.task_outputs[k]
        index = torch.arange(len(data))
        if subset:
            index = torch.randperm(len(data), generator=g)[:subset].sort().values
        x, y = data.inputs[index], data.targets[index] - outs[0]
        with torch.no_grad():
            z = model[1](x)[:, outs].double()  # eval mode: the dropout layer is the identity
        assert r["eval_task_name"] == stream.tasks[k].name and r["n_eval"] == len(index)
        assert r["accuracy"] == pytest.approx(float((z.argmax(1) == y).double().mean()))
        assert r["loss"] == pytest.approx(float(-torch.log_softmax(z, 1)[torch.arange(len(y)), y].mean()), rel=1e-5)
        assert r["chance_accuracy"] == 0.5
        assert r["majority_accuracy"] == pytest.approx(float(torch.bincount(y).max()) / len(y))
        assert r["loss"] > 0.5 and 0 < r["accuracy"] < 1  # a sharp model that is often wrong: every value shows


# --- causal LMs: per token, over the response tokens only ------------------------------------------------


def lm_trainer(tmp_path):
    from test_lm import TINY, pairs_stream

    from forgetting.registry import build_model

    stream = pairs_stream(tmp_path)
    config = make_config(benchmark="text-file", model="gpt2", method="naive", eval_batch_size=5, device="cpu",
                         progress=False)
    torch.manual_seed(0)
    model = build_model("gpt2", stream, TINY)
    base = copy.deepcopy(model)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        for p in model.parameters():
            p.mul_(3.0)  # larger logits in both, sharply different next-token distributions
    tr = Trainer(config, stream, model, build_methods("naive", config.hparams), torch.device("cpu"))
    tr.base_model = frozen_copy(base)
    return tr


def lm_hand_kl(tr, task: int) -> tuple[float, float]:
    """(mean per response token of KL(p_base || p_current), the same over every real token), each sequence run
    on its own, unpadded."""
    data = tr.stream.tasks[task].test
    resp, every = [], []
    tr.model.eval()
    with torch.no_grad():
        for i in range(len(data)):
            seq = [data.bos, *data.prompts[i], *data.responses[i]]
            ids = torch.tensor([seq])
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
            p_log = torch.log_softmax(tr.base_model(inputs)[0, :-1].double(), -1)
            q_log = torch.log_softmax(tr.model(inputs)[0, :-1].double(), -1)
            kl = (p_log.exp() * (p_log - q_log)).sum(-1)  # position j predicts token j + 1
            every.append(kl)
            resp.append(kl[len(data.prompts[i]):])  # the response's tokens are predicted from here on
    assert sum(len(r) for r in resp) == sum(len(r) for r in data.responses)
    return float(torch.cat(resp).mean()), float(torch.cat(every).mean())


def test_lm_kl_base_is_the_forward_kl_per_response_token_without_prompt_or_padding(tmp_path):
    tr = lm_trainer(tmp_path)
    rows = tr.record("epoch", 1, 1, 0.0)
    for task, r in enumerate(rows):
        expected, over_every_token = lm_hand_kl(tr, task)
        assert expected > 0.3 and abs(over_every_token - expected) > 0.01 * expected  # the prompt shows
        assert r["kl_base"] == pytest.approx(expected, rel=1e-5), (task, r["kl_base"], expected)
        with torch.no_grad():  # the other direction differs: the reversed metric would not pass
            tr.model, tr.base_model = tr.base_model, tr.model
            reverse = lm_hand_kl(tr, task)[0]
            tr.model, tr.base_model = tr.base_model, tr.model
        assert abs(reverse - expected) > 0.01 * expected


class PeekingLM(nn.Module):
    """Logits from a fixed random table of the current token, plus 5 on the next token where that token is not a
    multiple of 3; and, after a prompt whose answer it is told, plus 5 on that answer's tokens. Right on some tokens
    and answers and not others, so every measure of a row has a value a mistake would move."""

    def __init__(self, answers: dict, vocab: int = 258):
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(5)) * 2.0)
        self.answers = answers  # prompt tokens -> the response it boosts

    def forward(self, inputs):
        ids = inputs["input_ids"]
        logits = self.table[ids].clone()
        nxt = ids[:, 1:]
        logits[:, :-1] += 5.0 * nn.functional.one_hot(nxt, logits.shape[-1]) * (nxt % 3 != 0)[..., None]
        for b in range(ids.shape[0]):
            for n in range(ids.shape[1]):
                answer = self.answers.get(tuple(ids[b, 1:1 + n].tolist()))
                if answer is not None:
                    for j, token in enumerate(answer[: ids.shape[1] - n]):
                        logits[b, n + j, token] += 5.0
        return logits


def test_lm_rows_by_hand_nll_token_and_answer_accuracy_exact_match(tmp_path):
    import math

    tr = lm_trainer(tmp_path)
    told = {}
    for task in tr.stream.tasks:  # the right answer for the examples of target 0 mod 3, a wrong one for the others
        d = task.test
        for i in range(len(d)):
            t = int(d.targets[i])
            told[tuple(d.prompts[i])] = d.choices[t if t % 3 == 0 else (t + 1) % len(d.choices)]
    tr.model = PeekingLM(told)
    tr.base_model = None
    rows = tr.record("epoch", 1, 1, 0.0)
    for task, r in enumerate(rows):
        data = tr.stream.tasks[task].test
        logps, hits, exact, answers = [], [], 0, 0

        def response_logp(i, response):
            seq = torch.tensor([[data.bos, *data.prompts[i], *response]])
            logp = torch.log_softmax(tr.model({"input_ids": seq})[0, :-1].double(), -1)
            at = torch.arange(len(data.prompts[i]), len(data.prompts[i]) + len(response))
            return logp[at, torch.tensor(response)], logp[at].argmax(-1) == torch.tensor(response)

        with torch.no_grad():
            for i in range(len(data)):
                lp, hit = response_logp(i, data.responses[i])
                logps.append(lp)
                hits.append(hit)
                exact += int(hit.all())
                scores = [float(response_logp(i, c)[0].sum()) for c in data.choices]
                answers += int(max(range(len(scores)), key=scores.__getitem__) == int(data.targets[i]))
        nll = float(-torch.cat(logps).mean())
        hits = torch.cat(hits)
        assert r["n_eval"] == len(data) and r["n_tokens"] == len(hits)
        assert r["nll"] == pytest.approx(nll, rel=1e-5) and r["loss"] == r["nll"]
        assert r["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
        assert r["token_accuracy"] == pytest.approx(float(hits.double().mean()))
        assert r["exact_match"] == pytest.approx(exact / len(data))
        assert r["answer_accuracy"] == pytest.approx(answers / len(data)) and r["accuracy"] == r["answer_accuracy"]
    assert any(0 < r["token_accuracy"] < 1 for r in rows) and any(r["exact_match"] > 0 for r in rows)
    assert any(0 < r["exact_match"] < r["token_accuracy"] for r in rows) and any(r["answer_accuracy"] > 0 for r in rows)
