"""Benchmark scores of causal LMs: ROUGE-L/BLEU/EM as the libraries give them, TRACE's OP/BWT, greedy generation
with the KV cache, and lm-evaluation-harness on the live model (no reload, no copy)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from forgetting.metrics import backward_transfer, overall_performance, trace_bwt
from forgetting.objectives.causal_lm import scores
from forgetting.registry import build_model, tokenizer_maker
from forgetting.streams import build_stream

DATA = Path(__file__).parent / "data"
TINY = {"gpt2_layers": 1, "gpt2_width": 16, "gpt2_heads": 2, "gpt2_dropout": 0.0}
PREDICTIONS = ["the cat sat on the mat", "Council approves bike lanes.", " B"]
REFERENCES = ["the cat is on the mat", "Council approves Main Street bike lanes.", "B"]


def test_exact_match_rouge_l_and_bleu_equal_the_libraries_and_hand_values():
    rouge_score = pytest.importorskip("rouge_score.rouge_scorer")
    sacrebleu = pytest.importorskip("sacrebleu")
    assert scores.exact_match(PREDICTIONS, REFERENCES) == pytest.approx(1 / 3)  # ' B' == 'B' once stripped
    scorer = rouge_score.RougeScorer(["rougeL"])
    lib = np.mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDICTIONS, REFERENCES)])
    assert scores.rouge_l(PREDICTIONS, REFERENCES) == pytest.approx(lib, abs=1e-12)
    # by hand: LCS 'the cat on the mat' = 5 of 6 tokens each way -> F = 5/6; 'council approves bike lanes' = 4 of
    # 4 and of 6 -> P 1, R 2/3, F 0.8; 'b' = 'b' -> 1
    assert scores.rouge_l(PREDICTIONS, REFERENCES) == pytest.approx((5 / 6 + 0.8 + 1.0) / 3, abs=1e-12)
    assert scores.bleu(PREDICTIONS, REFERENCES) == pytest.approx(
        sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score / 100, abs=1e-12)
    assert scores.bleu(REFERENCES, REFERENCES) == pytest.approx(1.0)
    assert scores.main_score("trace", "MeetingBank") == "rouge_l" and scores.main_score("trace", "FOMC") == "exact_match"
    with pytest.raises(ValueError):
        scores.rouge_l(["a"], [])


def test_edit_similarity_and_sari_equal_the_library_and_published_values():
    fuzz = pytest.importorskip("rapidfuzz.fuzz")
    pytest.importorskip("sacrebleu")
    # fuzzywuzzy's fuzz.ratio (TRACE's Py150 score) is round(100 * Indel similarity): 'kitten'/'sitting' share
    # 4 letters of 6 + 7 -> 8/13 = 61.5 -> 62; Py150's placeholders written out first; an empty generation scores 0
    assert fuzz.ratio("kitten", "sitting") == pytest.approx(800 / 13)
    assert scores.edit_similarity(["kitten"], ["sitting"]) == pytest.approx(0.62)
    assert scores.edit_similarity(["x = <NUM_LIT> + <STR_LIT:foo>", "", "a"], ["x = 0 + foo", "a", "a"]) == \
        pytest.approx(2 / 3)
    # SARI: the three test cases of Xu et al. (2016) with tensor2tensor's values (its sari_hook_test; the first
    # is also the example of Hugging Face evaluate's sari, which TRACE uses for 20Minuten: 26.953601953601954)
    source = "About 95 species are currently accepted ."
    refs = ["About 95 species are currently known .", "About 95 species are now accepted .", "95 species are now accepted ."]
    for output, value in [("About 95 you now get in .", 0.2695360), ("About 95 species are now agreed .", 0.6170966),
                          ("About 95 species are currently agreed .", 0.5088682)]:
        assert scores.sari([source], [output], [refs]) == pytest.approx(value, abs=5e-8)
    assert scores.sari([source.replace(" .", ".")], ["About 95 you now get in."], [[r.replace(" .", ".") for r in refs]]) \
        == pytest.approx(0.26953601953601954, abs=1e-15)  # evaluate's card: 13a splits the period off
    assert scores.sari([source], [source], [[source]]) == 1.0  # output = reference: every 0/0 is 1
    assert scores.main_score("trace", "Py150") == "edit_similarity" and scores.main_score("trace", "20Minuten") == "sari"
    with pytest.raises(ValueError):
        scores.sari(["a"], ["a", "b"], [["a"], ["b"]])


def test_op_and_bwt_equal_hand_values_on_a_3x3_case():
    A = np.array([[0.9, 0.2, 0.1], [0.7, 0.8, 0.3], [0.5, 0.6, 0.95]])
    assert overall_performance(A) == pytest.approx((0.5 + 0.6 + 0.95) / 3, abs=1e-15)
    assert trace_bwt(A) == pytest.approx(((0.5 - 0.9) + (0.6 - 0.8)) / 2, abs=1e-15) == backward_transfer(A)
    with_lm_eval = np.hstack([A, [[0.3], [0.2], [0.1]]])  # a column of lm-eval: never learned, not in OP
    assert overall_performance(with_lm_eval) == overall_performance(A)


def trace_stream(**options):
    opts = {"data_dir": str(DATA / "trace"), "trace_tasks": ["FOMC", "MeetingBank"], "max_seq_len": 256,
            "tokenizer": tokenizer_maker("gpt2", options)}
    return build_stream("trace", "domain", opts)


def tiny_model(stream, seed=0):
    torch.manual_seed(seed)
    model = build_model("gpt2", stream, TINY)
    with torch.no_grad():  # large random weights: varied, confident predictions
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def test_greedy_generation_with_the_kv_cache_equals_an_argmax_loop_without_it():
    from forgetting.objectives.causal_lm.generate import greedy

    stream = trace_stream()
    model = tiny_model(stream)
    data = stream.tasks[0].test
    rows = torch.arange(len(data))
    out, seconds = greedy(model, data, rows, max_new_tokens=6, batch_size=8, device=torch.device("cpu"))
    assert seconds > 0 and len(out) == len(data) and any(out)  # something generated, compared below
    for i, got in zip(rows.tolist(), out):
        ids = [data.bos, *data.prompts[i]]
        expected = []
        with torch.no_grad():
            for _ in range(6):  # the whole sequence again at every step: no cache
                nxt = int(model({"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids))})[0, -1].argmax())
                if nxt == data.tokenizer.eos_token_id:
                    break
                expected.append(nxt)
                ids.append(nxt)
        assert got == expected


def test_the_evaluator_scores_generations_as_the_benchmark_does():
    stream = trace_stream(max_new_tokens=8)
    model = tiny_model(stream)
    from forgetting.objectives import objective_for

    evaluator = objective_for(stream).evaluator(stream, 16, torch.device("cpu"))
    rows = evaluator.evaluate(model)
    from forgetting.objectives.causal_lm.generate import greedy

    for k, row in enumerate(rows):
        data = stream.tasks[k].test
        out, _ = greedy(model, data, torch.arange(len(data)), 8, 4, torch.device("cpu"))
        preds = [data.tokenizer.decode(o) for o in out]
        refs = [data.tokenizer.decode(r[:-1]) for r in data.responses]
        assert row["gen_exact_match"] == scores.exact_match(preds, refs)
        assert row["rouge_l"] == pytest.approx(scores.rouge_l(preds, refs))
        assert row["bleu"] == pytest.approx(scores.bleu(preds, refs))
        own = "rouge_l" if k == 1 else "gen_exact_match"  # MeetingBank: TRACE's ROUGE-L
        assert row["gen_score"] == row[own] == row["accuracy"] and row["gen_tokens_per_s"] > 0


def test_py150_and_20minuten_rows_score_edit_similarity_and_sari(tmp_path, monkeypatch):
    import shutil

    from forgetting.objectives import objective_for
    from forgetting.objectives.causal_lm import evaluate

    for task in ("Py150", "20Minuten"):  # MeetingBank's files in their folders: the task's name picks the score
        shutil.copytree(DATA / "trace" / "MeetingBank", tmp_path / task)
    stream = build_stream("trace", "domain", {"data_dir": str(tmp_path), "trace_tasks": ["Py150", "20Minuten"],
                                               "max_seq_len": 256, "max_new_tokens": 8,
                                               "tokenizer": tokenizer_maker("gpt2", {"max_new_tokens": 8})})
    said = stream.tokenizer("Park renamed.", add_special_tokens=False)["input_ids"]  # every generation
    monkeypatch.setattr(evaluate, "greedy", lambda model, data, rows, *a: ([said] * len(rows), 1.0))
    rows = objective_for(stream).evaluator(stream, 16, torch.device("cpu")).evaluate(tiny_model(stream))
    data = stream.tasks[0].test
    assert [data.tokenizer.decode(r[:-1]) for r in data.responses] == ["Park renamed unanimously."]
    # Py150: 'Park renamed.' and 'Park renamed unanimously.' share 13 characters of 13 + 25 -> 26/38 = 68.4 -> 68
    assert rows[0]["gen_score"] == rows[0]["accuracy"] == pytest.approx(0.68, abs=1e-12)
    # 20Minuten: SARI against the prompt as the source (TRACE's sources_sequences)
    prompt = data.tokenizer.decode(stream.tasks[1].test.prompts[0])
    sari = scores.sari([prompt], ["Park renamed."], [["Park renamed unanimously."]])
    assert rows[1]["gen_score"] == rows[1]["accuracy"] == pytest.approx(sari, abs=1e-12)
    assert sari != scores.sari(["Park renamed unanimously."], ["Park renamed."], [["Park renamed unanimously."]])


def test_lm_eval_on_the_live_model_equals_lm_eval_on_its_weights_saved_and_reloaded(tmp_path):
    pytest.importorskip("lm_eval")
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    from forgetting.objectives.causal_lm.harness import Harness

    stream = trace_stream()
    assert isinstance(stream.tokenizer, PreTrainedTokenizerFast)  # what lm-eval's HFLM takes
    model = tiny_model(stream)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    harness = Harness(["forgetting_general_mc"], limit=8, batch_size=4, max_length=256)
    random.seed(5)
    torch.manual_seed(5)
    states = random.getstate(), torch.get_rng_state()
    live = harness.evaluate(model, stream.tokenizer)
    assert (random.getstate(), torch.get_rng_state().equal(states[1])) == (states[0], True)  # no reseeding
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.lm.save_pretrained(tmp_path / "ckpt")
    stream.tokenizer.save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    again = harness.evaluate(reloaded, AutoTokenizer.from_pretrained(tmp_path / "ckpt"))
    assert live == again
    (metric, value, n), = live.values()
    assert metric == "acc" and n == 8 and 0.0 <= value <= 1.0


def test_a_run_writes_generation_scores_and_lm_eval_rows_at_task_boundaries(tmp_path):
    pytest.importorskip("lm_eval")
    from forgetting.metrics import run_summary
    from forgetting.results import read_metrics_csv
    from forgetting.run import main

    argv = ["--benchmark", "trace", "--data-dir", str(DATA / "trace"), "--trace-tasks", "FOMC,MeetingBank",
            "--model", "gpt2", "--gpt2-layers", "1", "--gpt2-width", "16", "--gpt2-heads", "2", "--max-seq-len", "256",
            "--epochs", "2", "--batch-size", "4", "--method", "naive", "--max-new-tokens", "4",
            "--lm-eval-tasks", "forgetting_general_mc", "--lm-eval-limit", "4", "--device", "cpu",
            "--results-dir", str(tmp_path / "r"), "--quiet"]
    assert main(argv) == 0
    (run,) = list((tmp_path / "r").iterdir())
    rows = read_metrics_csv(run / "metrics.csv")
    lm_eval = rows[rows["eval_task_name"] == "forgetting_general_mc"]
    # once untrained, then at the end of each task (its last epoch): not after epoch 1
    assert list(zip(lm_eval["phase"], lm_eval["trained_task"], lm_eval["epoch"])) == [("init", -1, 0), ("epoch", 0, 2),
                                                                                    ("epoch", 1, 2)]
    assert (lm_eval["eval_task"] == 2).all() and (lm_eval["lm_eval_metric"] == "acc").all()
    assert (lm_eval["n_eval"] == 4).all()
    gen = rows[rows["eval_task"] < 2]
    assert gen["gen_score"].notna().all() and (gen["gen_score"] == gen["accuracy"]).all()
    summary = run_summary(rows)
    assert summary["tasks_trained"] == 2 and not np.isnan(summary["op"])
    from forgetting.metrics import old_task_curves
    from forgetting.report_runs import read_checked

    assert read_checked(run).n_tasks == 2  # the lm-eval task is measured, not learned: the run is complete
    curves = old_task_curves(rows)  # its curve runs from the end of the base task on, beside task 0's
    assert set(curves["eval_task"]) == {0, 2}


def test_lm_eval_at_evaluations_also_runs_it_at_every_eval_every_step(tmp_path):
    pytest.importorskip("lm_eval")
    from forgetting.results import read_metrics_csv
    from forgetting.run import main

    # FOMC's 4 training rows, batch 2: 2 steps a task; --eval-every 1: a step row after each
    argv = ["--benchmark", "trace", "--data-dir", str(DATA / "trace"), "--trace-tasks", "FOMC", "--model", "gpt2",
            "--gpt2-layers", "1", "--gpt2-width", "16", "--gpt2-heads", "2", "--max-seq-len", "256", "--epochs", "1",
            "--batch-size", "2", "--eval-every", "1", "--method", "naive", "--lm-eval-tasks", "forgetting_general_mc",
            "--lm-eval-limit", "2", "--device", "cpu", "--quiet"]
    for at in ("boundaries", "evaluations"):
        assert main([*argv, "--lm-eval-at", at, "--results-dir", str(tmp_path / at)]) == 0
    runs = {at: read_metrics_csv(next((tmp_path / at).iterdir()) / "metrics.csv") for at in ("boundaries", "evaluations")}
    points = {at: list(zip(r["phase"], r["global_step"])) for at, r in runs.items()}
    lm_eval = {at: list(zip(r[r["eval_task_name"] == "forgetting_general_mc"]["phase"],
                            r[r["eval_task_name"] == "forgetting_general_mc"]["global_step"]))
               for at, r in runs.items()}
    steps = sorted({p for p in points["evaluations"] if p[0] == "step"})
    assert len(steps) == 2 and lm_eval["boundaries"] == [("init", 0), ("epoch", 2)]
    assert lm_eval["evaluations"] == [("init", 0), *steps, ("epoch", 2)]
    # the stream's own rows and the training are the same either way; only lm-eval's rows are added
    own = {at: r[r["eval_task_name"] != "forgetting_general_mc"].reset_index(drop=True) for at, r in runs.items()}
    assert own["boundaries"][["phase", "global_step", "loss"]].equals(own["evaluations"][["phase", "global_step", "loss"]])


def test_an_unknown_lm_eval_task_is_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch):
    pytest.importorskip("lm_eval")
    from types import SimpleNamespace

    from forgetting.objectives.causal_lm.harness import Harness
    from forgetting.run import main

    # lm-eval's own index of its ~15,000 task YAMLs takes seconds to build: a stand-in holding one name
    monkeypatch.setattr(Harness, "manager", lambda self: SimpleNamespace(all_tasks=["hellaswag"]))

    argv = ["--benchmark", "trace", "--data-dir", str(DATA / "trace"), "--trace-tasks", "FOMC", "--model", "gpt2",
            "--max-seq-len", "256", "--lm-eval-tasks", "no_such_task_xyz", "--device", "cpu",
            "--results-dir", str(tmp_path / "r"), "--quiet"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "unknown task 'no_such_task_xyz'" in err[0], err
    assert not (tmp_path / "r").exists()
