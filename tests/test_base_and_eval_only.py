"""A pretrained base not trained again (--no-train-base) and evaluation-only tasks (--eval-only-tasks)."""

from __future__ import annotations

import pytest
import torch

from forgetting.objectives import objective_for
from forgetting.registry import make_config
from forgetting.results import read_run
from forgetting.run import main, prepare, run_experiment
from forgetting.train import Trainer

from test_lm import TINY, tiny_checkpoint, write_pairs


def pairs_config(tmp_path, model="gpt2", method="naive", results="r", **loop):
    write_pairs(tmp_path / "pairs.csv")
    stream = {"text_file": str(tmp_path / "pairs.csv"), "prompt_column": "prompt", "response_column": "response",
              "max_seq_len": 40}
    stream.update(loop.pop("stream", {}))
    return make_config(benchmark="text-file", model=model, method=method, epochs=1, batch_size=8, lr=3e-3,
                       device="cpu", progress=False, model_options=TINY if model == "gpt2" else {},
                       stream_options=stream, results_dir=str(tmp_path / results), **loop)


def test_a_checkpoint_not_trained_again_evaluates_bitwise_as_loaded(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    cfg = pairs_config(tmp_path, model=f"causal:{ckpt}", train_base=False)
    run_dir, rows, status = run_experiment(cfg)
    assert status == "complete"
    base = rows[(rows["phase"] == "epoch") & (rows["trained_task"] == 0)]
    assert (base["global_step"] == 0).all() and base["train_loss"].isna().all()  # not one step on task 0
    _, stream, model, _ = prepare(cfg)  # the checkpoint as loaded, evaluated by the same evaluator
    expected = objective_for(stream).evaluator(stream, cfg.eval_batch_size, torch.device("cpu")).evaluate(model)
    for got, want in zip(base.to_dict("records"), expected):
        for key in ("nll", "token_accuracy", "answer_accuracy", "exact_match", "accuracy", "n_tokens"):
            assert got[key] == want[key] or (got[key] != got[key] and want[key] != want[key]), key
    # the first fine-tuning steps are on the stream's second task
    assert rows.loc[rows["trained_task"] == 1, "global_step"].max() > 0
    from safetensors.torch import load_file

    saved = load_file(run_dir / "checkpoints" / "task_0.safetensors")
    loaded = prepare(cfg)[2].state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in loaded)  # the base checkpointed bitwise as loaded


def test_train_base_at_its_default_keeps_run_ids_and_off_changes_them(tmp_path):
    assert pairs_config(tmp_path, train_base=True).run_id == pairs_config(tmp_path).run_id
    assert pairs_config(tmp_path, train_base=False).run_id != pairs_config(tmp_path).run_id


def test_a_run_without_base_training_resumes_to_the_same_rows(tmp_path, monkeypatch):
    from conftest import resumed_equals_whole

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    resumed_equals_whole(pairs_config(tmp_path, model=f"causal:{ckpt}", results="cut", train_base=False), tmp_path,
                         monkeypatch)


@pytest.mark.parametrize("method", ["naive", "replay"])
def test_an_evaluation_only_task_never_reaches_the_optimiser(tmp_path, monkeypatch, method):
    cfg = pairs_config(tmp_path, method=method, stream={"eval_only_tasks": ["echo"]})
    _, stream, _, _ = prepare(cfg)
    assert [t.name for t in stream.tasks] == ["text-file[plus]", "text-file[twice]", "text-file[echo]"]
    assert stream.n_learned == 2 and len(stream.tasks[2].train) == 0
    held = stream.tasks[2].test
    held_sequences = {tuple([held.bos, *p, *r]) for p, r in zip(held.prompts, held.responses)}
    seen = []
    original = Trainer.step

    def spy(self, batch, t, epoch):
        ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
        seen.extend(tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask))
        assert not (batch.task_ids == 2).any()
        return original(self, batch, t, epoch)

    monkeypatch.setattr(Trainer, "step", spy)
    _, rows, status = run_experiment(cfg)
    assert status == "complete" and seen and not held_sequences & set(seen)
    held_rows = rows[rows["eval_task"] == 2]
    # measured at every evaluation point (untrained, after each epoch), flagged evaluation-only
    assert len(held_rows) == len(rows[rows["eval_task"] == 0]) and (held_rows["eval_only"] == 1).all()
    assert rows.loc[rows["eval_task"] < 2, "eval_only"].isna().all()
    assert set(rows["trained_task"]) == {-1, 0, 1}  # never trained


def test_evaluation_only_bad_input_is_one_line_exit_2(tmp_path, capsys):
    write_pairs(tmp_path / "pairs.csv")
    base = ["--benchmark", "text-file", "--text-file", str(tmp_path / "pairs.csv"), "--prompt-column", "prompt",
            "--response-column", "response", "--model", "gpt2", "--epochs", "1", "--device", "cpu", "--quiet",
            "--results-dir", str(tmp_path / "r")]
    for extra, needle in ((["--eval-only-tasks", "nope"], "task 'nope' has no rows"),
                          (["--eval-only-tasks", "echo", "--text-tasks", "plus", "echo"], "also a task to learn")):
        assert main(base + extra) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and needle in err[0], err
        assert not (tmp_path / "r").exists()
    pytest.importorskip("avalanche")
    for argv, needle in ((["--benchmark", "split-digits", "--no-train-base", "--method", "avalanche-naive"],
                          "--train-base False: applies to our training loop only"),):
        assert main(argv + ["--quiet", "--results-dir", str(tmp_path / "r")]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and needle in err[0], err
        assert not (tmp_path / "r").exists()
