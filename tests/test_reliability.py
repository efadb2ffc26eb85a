"""Reproducible rows, resumption after SIGKILL, and a NaN loss that stops the run cleanly."""

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from forgetting.config import RunConfig
from forgetting.registry import make_config
from forgetting.errors import RunFailed
from forgetting.run import run_experiment
from forgetting.results import read_run
from conftest import ROOT, run_cli

TIMING = ["wall_time"]


def rows_of(tmp, seed, **kw):
    cfg = make_config(seed=seed, epochs=2, results_dir=str(tmp), progress=False, **kw)
    _, rows, _ = run_experiment(cfg, force=True)
    return rows.drop(columns=TIMING)


def test_same_seed_same_rows_other_seed_other_rows(tmp_path):
    a = rows_of(tmp_path / "a", 5, method="kl+rdrop")
    b = rows_of(tmp_path / "b", 5, method="kl+rdrop")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    c = rows_of(tmp_path / "c", 6, method="kl+rdrop")
    assert not a.drop(columns=["run_id", "seed"]).equals(c.drop(columns=["run_id", "seed"]))
    assert (a["accuracy"].to_numpy() != c["accuracy"].to_numpy()).any()


def test_manifest_records_what_reproduction_needs(tmp_path):
    cfg = make_config(seed=3, epochs=1, results_dir=str(tmp_path), progress=False)
    run_dir, _, _ = run_experiment(cfg)
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "complete" and m["seed"] == 3 and m["device"] == "cpu"
    assert m["versions"]["torch"] and m["versions"]["python"]
    assert m["determinism"]["use_deterministic_algorithms"] is True
    assert m["wall_time_s"] > 0 and m["completed_tasks"] == 5
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "checkpoints" / "task_0.safetensors"))
    assert "head.weight" in weights


def wait_for(predicate, timeout=300.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
def test_sigkill_during_third_task_then_resume_gives_identical_rows(tmp_path):
    args = ["--epochs", "12", "--method", "kl+rdrop", "--seed", "4", "--quiet"]
    env_cmd = [sys.executable, "-m", "forgetting.run", *args, "--results-dir", str(tmp_path / "killed")]
    proc = subprocess.Popen(env_cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifests = tmp_path / "killed"

    def in_third_task():
        for m in manifests.glob("*/manifest.json"):
            try:
                return json.loads(m.read_text())["completed_tasks"] >= 2
            except (ValueError, OSError):
                return False
        return False

    assert wait_for(in_third_task), "the run never reached its third task"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = next(manifests.iterdir())
    _, rows, manifest = read_run(run_dir)
    assert manifest["status"] == "running", "a killed run must not read as complete"
    assert manifest["completed_tasks"] == 2, "killed outside the third task: slow the run down"
    assert rows["trained_task"].max() <= 2  # complete rows only, the file parses

    p = run_cli("forgetting.run", *args, "--results-dir", str(tmp_path / "killed"), "--resume")
    assert p.returncode == 0, p.stderr
    p = run_cli("forgetting.run", *args, "--results-dir", str(tmp_path / "whole"))
    assert p.returncode == 0, p.stderr
    _, resumed, m_resumed = read_run(run_dir)
    _, whole, _ = read_run(tmp_path / "whole" / run_dir.name)
    assert m_resumed["status"] == "complete" and m_resumed["resumed_at"][0]["after_task"] == 1
    pd.testing.assert_frame_equal(resumed.drop(columns=TIMING), whole.drop(columns=TIMING), check_exact=True)
    assert not resumed.drop(columns=TIMING).duplicated().any()


def test_nan_loss_stops_at_once_and_keeps_rows(tmp_path):
    cfg = make_config(lr=1e30, epochs=3, results_dir=str(tmp_path), progress=False)
    with pytest.raises(RunFailed) as exc:
        run_experiment(cfg)
    where = exc.value.where
    _, rows, manifest = read_run(tmp_path / cfg.run_id)
    assert manifest["status"] == "failed"
    assert manifest["failed_at"]["step"] == where["step"]
    assert f"step {where['step']}" in manifest["error"] and "task 0" in manifest["error"]
    assert (rows["phase"] == "init").sum() == 5  # the rows so far are kept
    # it stopped on the first non-finite loss: every step before it had a finite loss
    assert rows["global_step"].max() < where["step"]


def test_nan_loss_on_the_cli_is_one_line_without_traceback(tmp_path):
    p = run_cli("forgetting.run", "--lr", "1e30", "--quiet", "--results-dir", str(tmp_path))
    assert p.returncode == 1
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "non-finite loss" in lines[0] and "Traceback" not in p.stderr


class Crash(Exception):
    """Stands in for a kill right after a task boundary was saved."""


@pytest.mark.parametrize("method", ["ewc", "ewc-online", "si", "mas", "l2sp", "replay+kl", "joint", "kl+rdrop"])
def test_resume_restores_method_state(method, tmp_path, monkeypatch):
    """EWC's Fisher, SI's importance, the replay buffer...: a resumed run gives the same rows."""
    from forgetting.results import RunWriter

    cfg = make_config(method=method, epochs=2, seed=1, scenario="task", results_dir=str(tmp_path / "cut"),
                    progress=False, model_options={"hidden": [32], "dropout": 0.2})
    original = RunWriter.task_done

    def crash_after_task_1(self, trainer, task):
        original(self, trainer, task)
        if task == 1:
            raise Crash()

    monkeypatch.setattr(RunWriter, "task_done", crash_after_task_1)
    with pytest.raises(Crash):
        run_experiment(cfg)
    monkeypatch.setattr(RunWriter, "task_done", original)
    run_dir, _, status = run_experiment(cfg, resume=True)
    assert status == "complete"
    cfg.results_dir = str(tmp_path / "whole")
    whole_dir, _, _ = run_experiment(cfg)
    resumed, whole = read_run(run_dir)[1], read_run(whole_dir)[1]
    pd.testing.assert_frame_equal(resumed.drop(columns=TIMING), whole.drop(columns=TIMING), check_exact=True)
    assert read_run(run_dir)[2]["resumed_at"][0]["after_task"] == 1
