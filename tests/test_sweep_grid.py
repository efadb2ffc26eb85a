"""A one-off grid from the command line: forgetting-sweep --grid ... --seeds ... -- RUN OPTIONS."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import run_cli, subprocess_env, suite_rows_here, write_suite
from forgetting import sweep
from forgetting.errors import BadInput
from forgetting.results import METRICS
from forgetting.run import build_parser, config_from_args
from forgetting.sweep_grid import parse_axis, parse_seeds

RUN = ["--benchmark", "split-digits", "--method", "kl", "--epochs", "1", "--batch-size", "64", "--hidden", "16",
       "--dropout", "0"]


def test_seeds_and_axes_parse_as_written():
    assert parse_seeds("0-2") == [0, 1, 2]
    assert parse_seeds("0-2,5,1") == [0, 1, 2, 5]
    assert parse_axis("kl_lambda=0,0.5,1") == ("--kl-lambda", ["0", "0.5", "1"])
    assert parse_axis("--kl-lambda=3") == ("--kl-lambda", ["3"])
    for bad in ("2-0", "a", "", "-1"):
        with pytest.raises(BadInput, match="--seeds"):
            parse_seeds(bad)
    for bad in ("kl_lambda", "kl_lambda=", "=1", "kl_lambda=0,,1"):
        with pytest.raises(BadInput, match="--grid"):
            parse_axis(bad)


def test_grid_lists_the_product_with_the_run_ids_of_the_same_runs_by_hand(tmp_path):
    results = tmp_path / "results"
    p = run_cli("forgetting.sweep", "--grid", "kl_lambda=0,0.5,1", "--grid", "temperature=1,2", "--seeds", "0-1",
                "--results-dir", str(results), "--list", "--", *RUN)
    assert p.returncode == 0, p.stderr
    listed = [line.split()[1] for line in p.stdout.splitlines()]
    assert len(listed) == 3 * 2 * 2 == len(set(listed))
    expected = []
    for lam in ("0", "0.5", "1"):
        for t in ("1", "2"):
            for seed in ("0", "1"):
                ns = build_parser().parse_args([*RUN, "--kl-lambda", lam, "--temperature", t, "--seed", seed,
                                                "--results-dir", str(results.resolve())])
                expected.append(config_from_args(ns).run_id)
    assert listed == expected


@pytest.mark.slow
def test_grid_runs_as_a_sweep_and_a_second_call_skips_them(tmp_path, capsys):
    results = tmp_path / "results"
    args = ["--grid", "kl_lambda=0,1", "--seeds", "0", "--results-dir", str(results), "--workers", "1",
            "--no-report", "--quiet", "--", *RUN]
    p = run_cli("forgetting.sweep", *args)
    assert p.returncode == 0, p.stderr[-2000:]
    (log_file,) = (results / sweep.SWEEP_LOGS).glob("*.json")
    log = json.loads(log_file.read_text())
    assert log["grid"] == ["kl_lambda=0,1"] and log["run_args"] == RUN
    assert sorted(r["status"] for r in log["runs"].values()) == ["complete", "complete"]
    lambdas = sorted(json.loads((results / rid / "config.json").read_text())["method"]["options"]["kl_lambda"]
                     for rid in log["runs"])
    assert lambdas == [0.0, 1.0]
    for rid in log["runs"]:
        assert len(pd.read_csv(results / rid / METRICS)) > 0
    capsys.readouterr()
    code = sweep.main([a for a in args if a != "--quiet"])  # the second call in this process: nothing to start
    err = capsys.readouterr().err
    assert code == 0 and "2 already complete" in err, err


@pytest.mark.parametrize("args, message", [
    (["--grid", "kl_lambda=0,1"], "no suite"),
    (["--grid", "kl_lambda=0,x", "--", *RUN], "kl-lambda"),
    (["--grid", "kl_lambdaa=0,1", "--", *RUN], "--kl-lambdaa"),
    (["--seeds", "0-2", "--", *RUN, "--seed", "1"], "give the seeds once"),
    (["--", *RUN, "--results-dir", "x"], "--results-dir after --"),
    (["some.toml", "--", *RUN], "one or the other"),
])
def test_bad_grid_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    code = sweep.main(["--results-dir", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("python -m forgetting.sweep: error:")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


@pytest.mark.parametrize("script", ["forgetting-run", "forgetting-sweep", "forgetting-plot"])
def test_console_scripts_name_themselves_as_called(tmp_path, script):
    """Called as forgetting-run, the messages say forgetting-run (python -m ... says python -m ...)."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(sys.executable).parent / script
    if not path.exists():
        pytest.skip(f"{script} is not installed beside {sys.executable}")
    p = subprocess.run([str(path), "--nope"], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert p.returncode == 2 and p.stderr.startswith(f"{script}: error:"), p.stderr


FOUR = """
[defaults]
epochs = 1
batch_size = 64
model_options = { hidden = [16], dropout = 0.0 }
[[experiment]]
benchmark = "split-digits"
scenarios = ["domain"]
seeds = [0, 1]
[[experiment.method]]
name = "kl"
grid.kl_lambda = [0, 1]
"""


@pytest.mark.slow
def test_slurm_executor_through_submitit_local_gives_the_rows_of_the_runs_in_this_process(tmp_path, capsys):
    """A suite of 4 runs as a job array through submitit's local executor: the same runs, the same rows as the
    suite's runs made here (tests/test_sweep.py checks the process executor against the same). One of them
    was killed after task 1 (its checkpoint written) before the array: its task resumes it from there to the
    rows the uninterrupted run got. Claims and resume as the process executor's: a second call finds the runs
    complete, submits no job and leaves their rows alone (these checks share this test's runs)."""
    pytest.importorskip("submitit")
    from conftest import cut_after_task
    from forgetting.results import MANIFEST
    from forgetting.suite import load_suite

    suite = write_suite(tmp_path, FOUR, "four.toml")
    results = tmp_path / "slurm"
    cut = load_suite(suite).runs(str(results.resolve()), None)[0]
    with pytest.MonkeyPatch.context() as mp:
        cut_after_task(cut, 1, mp)
    assert json.loads((results / cut.run_id / MANIFEST).read_text())["status"] != "complete"
    p = run_cli("forgetting.sweep", str(suite), "--results-dir", str(results), "--workers", "2",
                "--executor", "slurm", "--slurm-cluster", "local", "--slurm-time", "10", "--no-report", "--quiet")
    assert p.returncode == 0, p.stderr[-3000:]
    slurm = {d.name: pd.read_csv(d / METRICS).drop(columns="wall_time")
             for d in results.iterdir() if (d / METRICS).is_file()}
    here = suite_rows_here(suite, tmp_path / "here")
    assert len(here) == 4 and slurm.keys() == here.keys()
    for rid, df in here.items():
        pd.testing.assert_frame_equal(slurm[rid], df, check_exact=True)
    assert list((results / "slurm").glob("*_submission.sh")) or list((results / "slurm").iterdir())
    resumed = json.loads((results / cut.run_id / MANIFEST).read_text())
    assert resumed["status"] == "complete" and [r["after_task"] for r in resumed["resumed_at"]] == [1]
    before = {rid: (results / rid / METRICS).read_bytes() for rid in slurm}
    jobs = sorted(str(f) for f in (results / "slurm").rglob("*"))
    capsys.readouterr()
    code = sweep.main([str(suite), "--results-dir", str(results), "--workers", "2", "--executor", "slurm",
                       "--slurm-cluster", "local", "--slurm-time", "10", "--no-report"])  # the second call, here
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert f"4 runs in {suite}: 4 already complete, 0 unfinished to run again, 0 new" in out.out + out.err
    assert {rid: (results / rid / METRICS).read_bytes() for rid in slurm} == before  # the same rows, not written again
    assert sorted(str(f) for f in (results / "slurm").rglob("*")) == jobs  # no job submitted


SEARCH = """
name = "lam"
[defaults]
epochs = 1
batch_size = 64
model_options = { hidden = [16], dropout = 0.0 }
[[experiment]]
name = "digits"
benchmark = "split-digits"
scenarios = ["domain"]
seeds = [0]
[[experiment.method]]
name = "kl"
grid.kl_lambda = [0.01, 10]
grid.kl_direction = ["forward", "reverse"]
"""


@pytest.mark.slow
def test_search_runs_a_small_study_and_every_trial_is_a_run(tmp_path, capsys):
    optuna = pytest.importorskip("optuna")
    suite = write_suite(tmp_path, SEARCH, "lam.toml")
    results = tmp_path / "results"
    args = [str(suite), "--search", "3", "--results-dir", str(results), "--workers", "1", "--quiet"]
    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="lam/digits:average_accuracy", storage=f"sqlite:///{results / 'search.db'}")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 3 and "3 trials" in out
    for t in trials:
        assert 0.01 <= t.params["kl_lambda"] <= 10 and t.params["kl_direction"] in ("forward", "reverse")
        (rid,) = t.user_attrs["run_ids"]
        config = json.loads((results / rid / "config.json").read_text())
        assert config["method"]["options"]["kl_lambda"] == t.params["kl_lambda"]
        by_hand = build_parser().parse_args(["--epochs", "1", "--batch-size", "64", "--hidden", "16", "--dropout", "0",
                                             "--kl-lambda", repr(t.params["kl_lambda"]), "--kl-direction",
                                             t.params["kl_direction"], "--results-dir", str(results.resolve())])
        assert config_from_args(by_hand).run_id == rid  # a trial is the run started by hand
        from forgetting.metrics import run_summary
        from forgetting.results import read_run

        _, rows, manifest = read_run(results / rid)
        assert manifest["status"] == "complete" and t.value == pytest.approx(run_summary(rows)["average_accuracy"])
    # again: the study continues (one more trial), and bad objectives are one line
    assert sweep.main([*args[:2], "1", *args[3:]]) == 0
    assert len(optuna.load_study(study_name="lam/digits:average_accuracy",
                                 storage=f"sqlite:///{results / 'search.db'}").trials) == 4
    assert sweep.main([*args, "--objective", "nope"]) == 2
    assert "--objective: 'nope'" in capsys.readouterr().err


