"""The causal-LM evaluator's bookkeeping, by hand: its batch size under the logits budget, the evaluated subset,
the rows of a plain-text (``lm``) task, the perplexity's cap and the model's mode. (Its measures against float64
hand values on a completion task are in test_drift.py.)"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from forgetting.evaluate import SUBSET_SEED
from forgetting.objectives.causal_lm.evaluate import EVAL_FLOATS, LMEvaluator


class FakeStream(SimpleNamespace):
    def __len__(self):
        return len(self.tasks)


def fake_stream(sizes, n_outputs=258, **info):
    """What the evaluator's constructor reads: info, the layout's output count, each task's test-set size."""
    return FakeStream(info=info, layout=SimpleNamespace(n_outputs=n_outputs),
                      tasks=[SimpleNamespace(test=range(n)) for n in sizes])


def test_batch_size_is_the_asked_one_within_the_logits_budget_and_at_least_one():
    assert EVAL_FLOATS == 2**24
    assert LMEvaluator(fake_stream([3], max_seq_len=40), 5, "cpu").batch_size == 5
    assert LMEvaluator(fake_stream([3], max_seq_len=40), 5000, "cpu").batch_size == 2**24 // (40 * 258)  # 1625
    assert LMEvaluator(fake_stream([3]), 5000, "cpu").batch_size == 2**24 // (512 * 258)  # default length 512: 127
    assert LMEvaluator(fake_stream([3], n_outputs=2**20, max_seq_len=64), 8, "cpu").batch_size == 1  # 0 -> 1


def test_the_subset_is_the_same_seeded_draw_per_task_and_every_example_where_it_is_not_smaller():
    ev = LMEvaluator(fake_stream([10, 3, 10, 4]), 4, "cpu", subset=4)
    g = torch.Generator().manual_seed(SUBSET_SEED)
    first = torch.randperm(10, generator=g)[:4].sort().values
    third = torch.randperm(10, generator=g)[:4].sort().values  # tasks 1 and 3 (n <= 4) draw nothing
    assert [t.tolist() for t in ev.index] == [first.tolist(), [0, 1, 2], third.tolist(), [0, 1, 2, 3]]
    assert first.tolist() != third.tolist() and first.tolist() != [0, 1, 2, 3]
    assert [b.tolist() for b in ev._batches(0)] == [first.tolist()]
    assert [t.tolist() for t in LMEvaluator(fake_stream([10, 3]), 4, "cpu").index] == [list(range(10)), [0, 1, 2]]
    assert [b.tolist() for b in LMEvaluator(fake_stream([10]), 4, "cpu")._batches(0)] == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                                                         [8, 9]]


class ConstantLM(nn.Module):
    """The same logits at every position, whatever the input; records the mode it was run in."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.float())
        self.modes = []

    def forward(self, inputs):
        self.modes.append(self.training)
        b, n = inputs["input_ids"].shape
        return self.logits.expand(b, n, -1).clone()


def texts_stream(tmp_path):
    from test_lm import write_texts

    from forgetting.registry import tokenizer_maker
    from forgetting.streams import build_stream

    return build_stream("text-file", "domain", {"text_file": str(write_texts(tmp_path / "t.csv", n=3)),
                                                "tokenizer": tokenizer_maker("gpt2"), "max_seq_len": 40})


def test_rows_of_a_plain_text_task_by_hand_in_eval_mode_and_the_mode_restored(tmp_path):
    stream = texts_stream(tmp_path)
    assert stream.info["lm_task"] == "lm"
    logits = torch.randn(stream.layout.n_outputs, generator=torch.Generator().manual_seed(0)) * 3.0
    model = ConstantLM(logits).train()
    ev = LMEvaluator(stream, 2, torch.device("cpu"))
    rows = ev.evaluate(model)
    assert model.training and model.modes and not any(model.modes)
    model.eval()
    ev.evaluate(model)
    assert not model.training
    logp = torch.log_softmax(logits.double(), 0)
    for k, r in enumerate(rows):
        data = stream.tasks[k].test
        inputs, _ = data.gather(torch.arange(len(data)))
        labels = inputs["labels"][:, 1:]
        tokens = labels[labels != -100]
        nll = float(-logp[tokens].mean())
        assert r["eval_task"] == k and r["eval_task_name"] == stream.tasks[k].name and r["n_eval"] == len(data)
        assert r["n_tokens"] == len(tokens) and r["nll"] == pytest.approx(nll, rel=1e-6) and r["loss"] == r["nll"]
        assert r["perplexity"] == pytest.approx(math.exp(nll), rel=1e-6)
        hit = float((tokens == int(logits.argmax())).double().mean())
        assert r["token_accuracy"] == pytest.approx(hit) and r["accuracy"] == r["token_accuracy"]
        for name in ("exact_match", "answer_accuracy", "kl_base"):  # no response, no choices, no base
            assert math.isnan(r[name]), name


def test_perplexity_is_capped_at_exp_700_where_the_nll_is_larger(tmp_path):
    stream = texts_stream(tmp_path)
    logits = torch.zeros(stream.layout.n_outputs)
    logits[0] = 2000.0  # token 0 never appears in the texts: every token costs ~2000 nats
    (r, *_) = LMEvaluator(stream, 8, torch.device("cpu")).evaluate(ConstantLM(logits))
    assert r["nll"] == pytest.approx(2000.0, rel=1e-4) and r["token_accuracy"] == 0.0
    assert r["perplexity"] == math.exp(700.0)


class OneExample:
    """One completion example, prompt [5] after the begin token 0, response [9] (one token that carries loss), choices
    [7] and [9] with the right one 1: the smallest case, where a mean over tokens or examples divides by 1."""

    choices = [[7], [9]]
    targets = torch.tensor([1])

    def __len__(self):
        return 1

    def sequences(self, rows, responses):
        ids = torch.tensor([[0, 5, *r] for r in responses])
        labels = torch.tensor([[-100, -100, *r] for r in responses])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    def gather(self, rows):
        return self.sequences(rows, [[9]] * len(rows)), self.targets[rows]


def test_one_example_with_one_token_its_means_divide_by_one():
    stream = FakeStream(info={"lm_task": "completion"}, layout=SimpleNamespace(n_outputs=12),
                        tasks=[SimpleNamespace(test=OneExample(), name="one")])
    logits = torch.zeros(12)
    logits[9], logits[7] = 2.0, 1.0
    (r,) = LMEvaluator(stream, 4, torch.device("cpu")).evaluate(ConstantLM(logits))
    nll = -float(torch.log_softmax(logits.double(), 0)[9])
    assert r["n_eval"] == 1 and r["n_tokens"] == 1 and r["nll"] == pytest.approx(nll, rel=1e-6)
    assert r["token_accuracy"] == 1.0 and r["exact_match"] == 1.0 and r["answer_accuracy"] == 1.0
    assert r["accuracy"] == 1.0 and math.isnan(r["kl_base"])
    ev = LMEvaluator(stream, 4, torch.device("cpu"))
    ev.max_new_tokens = 1  # --max-new-tokens 1: the generated answers' scores, their own score the accuracy
    ev.generated = lambda model, task: {"gen_score": 0.25, "accuracy": 0.25}
    (r,) = ev.evaluate(ConstantLM(logits))
    assert r["gen_score"] == r["accuracy"] == 0.25 and r["answer_accuracy"] == 1.0
    logits[7] = 3.0  # now the wrong choice and the wrong token are the most likely
    (r,) = LMEvaluator(stream, 4, torch.device("cpu")).evaluate(ConstantLM(logits))
    assert (r["token_accuracy"], r["exact_match"], r["answer_accuracy"], r["accuracy"]) == (0.0, 0.0, 0.0, 0.0)


class Generated:
    """What ``generated`` reads of a task's test set: its responses (end-of-text last) and a tokenizer."""

    responses = [[1, 2, 3, 0], [5, 0], [6, 0]]
    tokenizer = SimpleNamespace(decode=lambda ids: " ".join(map(str, ids)))

    def __len__(self):
        return 3


@pytest.mark.parametrize("name, own", [("trace[FOMC]", "gen_exact_match"), ("trace[MeetingBank]", "rouge_l"),
                                       ("MeetingBank", "rouge_l")])
def test_generation_scores_the_evaluated_examples_and_its_speed_is_tokens_per_second(monkeypatch, name, own):
    """greedy stood in for (its own test compares it with an argmax loop): the scores of its output against the
    responses less their end-of-text token, the task's own score (from the name inside [...]) as accuracy, and the
    tokens generated per second."""
    from forgetting.objectives.causal_lm import evaluate, scores

    calls = []

    def greedy(model, data, rows, max_new_tokens, batch_size, device):
        calls.append((rows.tolist(), max_new_tokens, batch_size))
        return [[1, 2, 3], [4], [6, 7]][: len(rows)], 2.0

    monkeypatch.setattr(evaluate, "greedy", greedy)
    stream = FakeStream(info={"max_new_tokens": 1, "scoring": "trace"}, layout=SimpleNamespace(n_outputs=8),
                        tasks=[SimpleNamespace(test=Generated(), name=name)])
    ev = LMEvaluator(stream, 4, "cpu")
    assert ev.max_new_tokens == 1
    g = ev.generated(None, 0)
    LMEvaluator(stream, 1, "cpu").generated(None, 0)
    LMEvaluator(stream, 100, "cpu").generated(None, 0)
    assert calls == [([0, 1, 2], 1, 4), ([0, 1, 2], 1, 1), ([0, 1, 2], 1, 64)]  # the batch size, at most 64
    preds, refs = ["1 2 3", "4", "6 7"], ["1 2 3", "5", "6"]
    assert g["gen_exact_match"] == pytest.approx(1 / 3) == scores.exact_match(preds, refs)
    assert g["rouge_l"] == scores.rouge_l(preds, refs) and g["bleu"] == scores.bleu(preds, refs)
    assert g["gen_score"] == g[own] == g["accuracy"] and g["rouge_l"] != g["gen_exact_match"]
    assert g["gen_tokens_per_s"] == 6 / 2.0
    monkeypatch.setattr(evaluate, "greedy", lambda *a: ([[1]], 0.0))
    assert math.isnan(LMEvaluator(stream, 4, "cpu", subset=1).generated(None, 0)["gen_tokens_per_s"])


def test_rows_are_sums_over_every_batch_the_same_in_batches_of_one(tmp_path):
    """Each measure accumulates over the evaluator's batches: in batches of one example it equals the one-batch
    value (test_drift.py checks that one by hand), on a completion task with choices, with a base model (kl_base)
    and with a model right on some tokens, responses and answers only (the accuracies)."""
    from test_drift import PeekingLM, lm_trainer

    tr = lm_trainer(tmp_path)
    stream = tr.stream
    told = {}
    for task in stream.tasks:
        d = task.test
        for i in range(len(d)):
            t = int(d.targets[i])
            told[tuple(d.prompts[i])] = d.choices[t if t % 2 == 0 else (t + 1) % len(d.choices)]
    for model, base in [(tr.model, tr.base_model), (PeekingLM(told), None)]:
        one = LMEvaluator(stream, 64, torch.device("cpu")).evaluate(model, base)
        single = LMEvaluator(stream, 1, torch.device("cpu")).evaluate(model, base)
        for a, b, task in zip(one, single, stream.tasks):
            assert a["n_eval"] == b["n_eval"] == len(task.test) > 1
            assert a["n_tokens"] == b["n_tokens"] > len(task.test)
            for name in ("nll", "token_accuracy", "exact_match", "answer_accuracy", "kl_base", "accuracy"):
                assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-7, nan_ok=True), name
        if base is not None:
            assert all(r["kl_base"] > 0.1 for r in one)
        else:
            assert any(0 < r["token_accuracy"] < 1 for r in one) and any(r["exact_match"] > 0 for r in one)
            assert any(r["answer_accuracy"] > 0 for r in one)


def test_generation_asks_for_the_lm_extras_scoring_libraries_by_name(monkeypatch):
    """--max-new-tokens needs rouge_score, sacrebleu and rapidfuzz (not the whole [lm] extra): one line naming
    them and the extra, before anything is evaluated."""
    from forgetting import extras
    from forgetting.errors import BadInput

    monkeypatch.setattr(extras, "find_spec", lambda name: None)
    with pytest.raises(BadInput) as e:
        LMEvaluator(fake_stream([3], max_new_tokens=2), 4, "cpu")
    assert str(e.value) == ("--max-new-tokens needs the [lm] extra (rouge_score, sacrebleu, rapidfuzz not installed): "
                            "pip install 'forgetting[lm]'")
    assert LMEvaluator(fake_stream([3], max_new_tokens=0), 4, "cpu").max_new_tokens == 0  # no generation: no check


def test_under_a_launcher_each_rank_evaluates_its_part_of_the_subset():
    """With a ``world`` the batches cover the part of the evaluated examples ``world.part`` gives this rank."""
    ev = LMEvaluator(fake_stream([10]), 2, "cpu")
    ev.world = SimpleNamespace(part=lambda idx: idx[3:8])
    assert [b.tolist() for b in ev._batches(0)] == [[3, 4], [5, 6], [7]]
    ev.world = None
    assert [b.tolist() for b in ev._batches(0)] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_the_harness_gets_the_runs_lm_eval_options_and_rows_come_only_with_it(monkeypatch):
    """--lm-eval-tasks/-limit/-include-path reach lm-evaluation-harness (stood in for) with the evaluator's batch size
    (as asked, not cut by the logits budget) and the longest sequence; without tasks no harness, no rows;
    --lm-eval-at evaluations asks for rows at every evaluation point."""
    from forgetting.objectives.causal_lm import harness

    made = []

    class Harness:
        def __init__(self, *args):
            made.append(args)

        def rows(self, model, first_index):
            return [("rows of", model, first_index)]

    monkeypatch.setattr(harness, "Harness", Harness)
    plain = LMEvaluator(fake_stream([3, 2]), 4, "cpu")
    assert plain.harness is None and plain.boundary_rows("model") == [] and made == []
    assert plain.rows_at_every_evaluation is False
    stream = fake_stream([3, 2], max_seq_len=2**20, lm_eval_tasks="arc_easy,piqa", lm_eval_limit=7,
                         lm_eval_include_path="/tasks", lm_eval_at="evaluations")
    stream.tokenizer = "tok"
    ev = LMEvaluator(stream, 4, "cpu")
    assert made == [("arc_easy,piqa", 7, "/tasks", 4, 2**20, "tok")] and ev.batch_size == 1
    assert ev.boundary_rows("model") == [("rows of", "model", 2)] and ev.rows_at_every_evaluation is True
    made.clear()
    stream = fake_stream([3], lm_eval_tasks="piqa", lm_eval_at="boundaries")
    stream.tokenizer = "tok"
    LMEvaluator(stream, 4, "cpu")
    assert made == [("piqa", 0, "", 4, 512, "tok")]  # the defaults: no limit, no include path, 512 tokens
    assert not LMEvaluator(fake_stream([3], lm_eval_at="boundaries"), 4, "cpu").rows_at_every_evaluation
