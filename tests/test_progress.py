"""Progress outside a terminal: whole lines (one per task and per evaluation), never carriage returns."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from conftest import run_cli
from forgetting import progress


def test_a_run_whose_stderr_is_a_pipe_writes_one_line_per_task_and_per_evaluation(tmp_path):
    results = tmp_path / "r"
    p = run_cli("forgetting.run", "--epochs", "2", "--eval-every", "5", "--device", "cpu",
                "--results-dir", str(results))
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stderr
    rows = pd.read_csv(next(results.glob("*/metrics.csv")))
    points = rows.drop_duplicates(["phase", "trained_task", "epoch", "global_step"])
    evals = [line for line in p.stderr.splitlines() if line.startswith("[forgetting] eval at step ")]
    assert len(evals) == len(points) == 1 + 5 * 2 + 80 // 5  # init, every epoch, every 5th of 80 steps
    # each line says the step and every task's accuracy as written to metrics.csv
    for line, (_, point) in zip(evals, points.iterrows()):
        assert line.startswith(f"[forgetting] eval at step {point['global_step']}, ")
        accs = rows[(rows["phase"] == point["phase"]) & (rows["global_step"] == point["global_step"])]
        want = " ".join(f"{k}:{100 * a:.1f}" for k, a in zip(accs["eval_task"], accs["accuracy"]))
        assert line.endswith(f"accuracy (%) per task {want}")
    tasks = [line for line in p.stderr.splitlines() if re.match(r"\[forgetting\] task \d .*: 16 steps$", line)]
    assert len(tasks) == 5


@pytest.mark.slow
def test_a_sweep_whose_stderr_is_a_pipe_writes_one_line_per_finished_run(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text('name = "tiny"\n[defaults]\nepochs = 1\nbatch_size = 64\n'
                     'model_options = { hidden = [16], dropout = 0.0 }\n[[experiment]]\nbenchmark = "split-digits"\n'
                     'scenarios = ["domain"]\nseeds = [0, 1]\n[[experiment.method]]\nname = "naive"\n')
    p = run_cli("forgetting.sweep", str(suite), "--results-dir", str(tmp_path / "r"), "--workers", "1", "--no-report",
                "--log-to", "tensorboard")
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stderr
    done = [line for line in p.stderr.splitlines() if re.match(r"\[forgetting\] sweep: \d/2 runs done, failed 0$", line)]
    assert done == ["[forgetting] sweep: 1/2 runs done, failed 0", "[forgetting] sweep: 2/2 runs done, failed 0"]
    # --log-to reaches every run of the sweep (without changing its id: the run directories are the ids)
    assert len(list((tmp_path / "r").glob("*/tensorboard/events.out.tfevents.*"))) >= 2
    configs = [json.loads(c.read_text()) for c in (tmp_path / "r").glob("*/config.json")]
    assert [c["log_to"] for c in configs] == [["tensorboard"], ["tensorboard"]]


def test_in_a_terminal_the_bars_are_tqdm(monkeypatch):
    from tqdm import tqdm

    monkeypatch.setattr(progress, "is_terminal", lambda: True)
    bar = progress.bar(10, "task 0", enabled=True)
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    assert isinstance(progress.bar(10, "task 0", enabled=True), progress.Lines)
    assert progress.bar(10, "task 0", enabled=False).disable
