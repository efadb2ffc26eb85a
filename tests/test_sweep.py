"""Suites and sweeps: checking suite files, expanding grids, resuming after SIGKILL, Ray = processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, run_cli, suite_rows_here
from forgetting import sweep
from forgetting.errors import BadInput
from forgetting.results import CONFIG, MANIFEST, METRICS
from forgetting.run import build_parser, config_from_args
from forgetting.streams import default_data_dir
from forgetting.suite import load_suite

TINY = """
name = "tiny"
[defaults]
epochs = {epochs}
batch_size = 64
model_options = {{ hidden = [32], dropout = 0.0 }}
[[experiment]]
benchmark = "split-digits"
scenarios = ["domain"]
seeds = [0, 1]
[[experiment.method]]
name = "kl"
grid.kl_lambda = [0, 1]
"""
ROW_KEY = ["phase", "trained_task", "epoch", "global_step", "eval_task"]


def write(tmp_path: Path, text: str, name: str = "suite.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def runs_with_status(results: Path, status: str) -> dict[str, dict]:
    out = {}
    for m in results.glob(f"*/{MANIFEST}"):
        manifest = json.loads(m.read_text())
        if manifest["status"] == status:
            out[m.parent.name] = manifest
    return out


def complete_runs(results: Path) -> dict[str, dict]:
    return runs_with_status(results, "complete")


def last_log(results: Path) -> dict:
    """The log of the latest sweep on ``results`` (each sweep writes its own)."""
    logs = sorted((results / sweep.SWEEP_LOGS).glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(logs[-1].read_text())


# --- suite files ------------------------------------------------------------------------------
def test_grid_expands_to_the_product_with_every_value_checked(tmp_path):
    suite = load_suite(write(tmp_path, """
        [defaults]
        seeds = [3, 4, 5]
        epochs = 2
        [[experiment]]
        benchmark = "split-digits"
        scenarios = ["task", "class"]
        lr = 0.01
        [[experiment.method]]
        name = "kl"
        temperature = 2
        grid = { kl_lambda = [0, 0.5], kl_direction = ["forward", "reverse", "symmetric"] }
        [[experiment.method]]
        name = "naive"
        """))
    runs = suite.runs(str(tmp_path / "r"), None)
    assert len(runs) == 2 * 3 * (2 * 3 + 1)  # scenarios x seeds x (grid points + naive)
    kl = [c for c in runs if c.method.name == "kl"]
    assert {(c.hparams["kl_lambda"], c.hparams["kl_direction"]) for c in kl} == {
        (lam, d) for lam in (0.0, 0.5) for d in ("forward", "reverse", "symmetric")}
    assert all(c.hparams["temperature"] == 2.0 and isinstance(c.hparams["temperature"], float) for c in kl)
    assert all(c.hparams == {} for c in runs if c.method.name == "naive")
    assert {c.seed for c in runs} == {3, 4, 5} and {c.scenario for c in runs} == {"task", "class"}
    assert all(c.epochs == 2 and c.lr == 0.01 and c.batch_size == 32 for c in runs)  # default filled in
    assert len({c.run_id for c in runs}) == len(runs)


def test_a_suite_run_has_the_run_id_of_the_same_run_from_the_cli(tmp_path):
    suite = load_suite(write(tmp_path, """
        [[experiment]]
        benchmark = "split-digits"
        scenarios = ["class"]
        seeds = [7]
        epochs = 3
        model_options = { hidden = [64, 32] }
        [[experiment.method]]
        name = "kl+rdrop"
        kl_lambda = 3
        rdrop_alpha = 0.5
        """))
    (from_suite,) = suite.runs("results", None)
    ns = build_parser().parse_args(["--scenario", "class", "--seed", "7", "--epochs", "3", "--hidden", "64", "32",
                                    "--method", "kl+rdrop", "--kl-lambda", "3", "--rdrop-alpha", "0.5"])
    from_cli = config_from_args(ns)
    assert from_suite.hashed_dict() == from_cli.hashed_dict()
    assert from_suite.run_id == from_cli.run_id


def test_default_and_quick_suites_load_and_quick_is_a_subset_of_default():
    default = load_suite(ROOT / "benchmarks" / "default.toml")
    quick = load_suite(ROOT / "benchmarks" / "quick.toml")
    default_ids = {c.run_id for c in default.runs("results", None)}
    quick_ids = {c.run_id for c in quick.runs("results", None)}
    assert quick_ids and quick_ids <= default_ids  # the full study reuses the quick study's runs
    assert {"task", "domain", "class"} <= {c.scenario for c in default.runs("results", None)
                                           if c.benchmark == "split-digits"}
    grid = {c.hparams["kl_lambda"] for c in default.runs("results", None) if c.method.name == "kl"}
    assert grid >= {0.0, 0.1, 0.3, 1.0, 3.0, 10.0}


BAD_SUITES = {
    "unknown method": ("""
        [[experiment]]
        benchmark = "split-digits"
        scenarios = ["domain"]
        seeds = [0]
        epochs = 1
        [[experiment.method]]
        name = "kl+ewcc"
        """, "experiment[0].method[0].name", "ewcc"),
    "wrong type": ("""
        [[experiment]]
        benchmark = "split-digits"
        scenarios = ["domain"]
        seeds = [0]
        epochs = "5"
        [[experiment.method]]
        name = "kl"
        """, "experiment[0].epochs", "'5'"),
    "wrong type in a grid": ("""
        [defaults]
        seeds = [0]
        epochs = 1
        [[experiment]]
        benchmark = "split-digits"
        scenarios = ["domain"]
        [[experiment.method]]
        name = "kl"
        grid.kl_lambda = [0.1, "big"]
        """, "experiment[0].method[0].grid.kl_lambda[1]", "'big'"),
    "out of range": ("""
        [defaults]
        seeds = [0]
        epochs = 1
        [[experiment]]
        benchmark = "split-digits"
        scenarios = ["domain"]
        [[experiment.method]]
        name = "kl"
        kl_lambda = -1
        """, "experiment[0].method[0].kl_lambda", "at least 0"),
    "wrong type in defaults": ("""
        [defaults]
        seeds = [0]
        epochs = 1.5
        [[experiment]]
        benchmark = "split-digits"
        scenarios = ["domain"]
        [[experiment.method]]
        name = "kl"
        """, "defaults.epochs", "1.5"),
    "missing field": ("""
        [[experiment]]
        scenarios = ["domain"]
        seeds = [0]
        epochs = 1
        [[experiment.method]]
        name = "kl"
        """, "experiment[0]", "missing field 'benchmark'"),
    "missing experiments": ('name = "empty"\n', "experiment", "missing field 'experiment'"),
    "unknown key": ("""
        [[experiment]]
        benchmark = "split-digits"
        scenarios = ["domain"]
        seeds = [0]
        epoch = 1
        [[experiment.method]]
        name = "kl"
        """, "experiment[0]", "unknown key 'epoch'"),
    "option of another method": ("""
        [[experiment]]
        benchmark = "split-digits"
        scenarios = ["domain"]
        seeds = [0]
        epochs = 1
        [[experiment.method]]
        name = "naive"
        grid.kl_lambda = [1]
        """, "experiment[0].method[0].grid", "unknown key 'kl_lambda'"),
    "unknown scenario": ("""
        [[experiment]]
        benchmark = "split-digits"
        scenarios = ["domain", "tasks"]
        seeds = [0]
        epochs = 1
        [[experiment.method]]
        name = "kl"
        """, "experiment[0].scenarios[1]", "'tasks'"),
    "empty grid": ("""
        [[experiment]]
        benchmark = "split-digits"
        scenarios = ["domain"]
        seeds = [0]
        epochs = 1
        [[experiment.method]]
        name = "kl"
        grid.kl_lambda = []
        """, "experiment[0].method[0].grid.kl_lambda", "non-empty list"),
    "not TOML": ("[[experiment]\nbenchmark = 1\n", "", "not valid TOML"),
}


@pytest.mark.parametrize("case", list(BAD_SUITES))
def test_malformed_suite_names_the_file_and_the_field(tmp_path, case):
    text, field, detail = BAD_SUITES[case]
    path = write(tmp_path, "\n".join(line.strip() for line in text.splitlines()), "bad.toml")
    with pytest.raises(BadInput) as e:
        load_suite(path)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert field in message and detail in message, message


def test_malformed_suite_on_the_cli_exits_2_before_any_run(tmp_path):
    good = write(tmp_path, TINY.format(epochs=1), "good.toml")
    bad = write(tmp_path, TINY.format(epochs=1).replace('name = "kl"', 'name = "kl"\nkl_lamda = 1'), "bad.toml")
    results = tmp_path / "results"
    p = run_cli("forgetting.sweep", str(good), str(bad), "--results-dir", str(results), "--no-report")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "kl_lamda" in lines[0], p.stderr
    assert not results.exists()  # not even the good suite's runs started


def test_missing_data_skips_or_stops_as_the_suite_says(tmp_path):
    text = """
        [[experiment]]
        benchmark = "split-digits"
        scenarios = ["domain"]
        seeds = [0]
        epochs = 1
        [[experiment.method]]
        name = "naive"
        [[experiment]]
        benchmark = "split-mnist"
        scenarios = ["task"]
        seeds = [0]
        epochs = 1
        if_data_missing = "{mode}"
        [[experiment.method]]
        name = "naive"
        """
    empty = tmp_path / "no-data"
    empty.mkdir()
    notes = []
    skip = write(tmp_path, text.format(mode="skip"), "skip.toml")
    planned = sweep.plan([str(skip)], str(tmp_path / "r"), str(empty), "cpu", note=notes.append)
    assert [p.config.benchmark for p in planned] == ["split-digits"]
    assert len(notes) == 1 and "split-mnist" in notes[0] and "no MNIST" in notes[0]
    stop = write(tmp_path, text.format(mode="error"), "stop.toml")
    with pytest.raises(BadInput, match=r"stop\.toml: experiment\[1\].*no MNIST"):
        sweep.plan([str(stop)], str(tmp_path / "r"), str(empty), "cpu", note=notes.append)


def test_ray_missing_gives_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    suite = write(tmp_path, TINY.format(epochs=1))
    code = sweep.main([str(suite), "--executor", "ray", "--results-dir", str(tmp_path / "r"), "--no-report"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install 'forgetting[ray]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


# --- running ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_resumes_after_sigkill_without_rerunning_or_duplicating(tmp_path):
    epochs = 5
    suite = write(tmp_path, TINY.format(epochs=epochs))
    results = tmp_path / "results"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "forgetting.sweep", str(suite), "--results-dir", str(results),
           "--workers", "1", "--no-report", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if complete_runs(results) and runs_with_status(results, "running"):
                break
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker, mid-way through the second run
    finally:
        proc.wait()
    before = complete_runs(results)
    killed = runs_with_status(results, "running")
    assert len(before) == 1 and len(killed) == 1, "the kill should land while the second run is writing rows"
    first_files = {rid: (results / rid / METRICS).read_bytes() for rid in before}

    # the second sweep's driver in this process (its worker is a process all the same)
    assert sweep.main([str(suite), "--results-dir", str(results), "--workers", "1", "--no-report", "--quiet"]) == 0
    after = complete_runs(results)
    assert len(after) == 4
    for rid, manifest in before.items():  # not run again: same start time, same bytes
        assert after[rid]["started"] == manifest["started"]
        assert (results / rid / METRICS).read_bytes() == first_files[rid]
    log = last_log(results)["runs"]
    assert {rid for rid, r in log.items() if r["before"] == "complete"} == set(before)
    assert {rid for rid, r in log.items() if r["before"] == "unfinished"} == set(killed)
    for rid in after:
        rows = pd.read_csv(results / rid / METRICS)
        assert not rows.duplicated(ROW_KEY).any()
        assert len(rows) == 5 * (1 + 5 * epochs)  # 5 tasks evaluated at init and after each epoch of 5 tasks
        config = json.loads((results / rid / CONFIG).read_text())
        assert config["loop"]["epochs"] == epochs


@pytest.mark.slow
def test_failed_run_is_listed_and_the_others_finish(tmp_path):
    suite = write(tmp_path, TINY.format(epochs=1).replace("grid.kl_lambda = [0, 1]", "kl_lambda = 1") + """
        [[experiment]]
        benchmark = "split-digits"
        scenarios = ["task"]
        seeds = [0]
        epochs = 1
        lr = 1e30  # a non-finite loss at once
        [[experiment.method]]
        name = "naive"
        """)
    results = tmp_path / "results"
    p = run_cli("forgetting.sweep", str(suite), "--results-dir", str(results), "--workers", "2", "--no-report")
    assert p.returncode == 1
    assert "1 of 3 runs failed" in p.stderr and "non-finite loss" in p.stderr, p.stderr
    assert len(complete_runs(results)) == 2
    log = last_log(results)["runs"]
    assert sorted(r["status"] for r in log.values()) == ["complete", "complete", "failed"]


@pytest.mark.slow
def test_ray_executor_gives_the_same_rows_as_processes(tmp_path):
    """The process and the Ray executor (each sweep's driver in its own process) give the rows of the runs made
    in this process (tests/test_sweep_grid.py and tests/test_ray_cluster.py compare SLURM and a cluster with
    the same)."""
    pytest.importorskip("ray")
    suite = write(tmp_path, TINY.format(epochs=2).replace("seeds = [0, 1]", "seeds = [0]"))  # 2 runs: kl at 0 and 1
    rows = {"here": suite_rows_here(suite, tmp_path / "here")}
    for executor in ("process", "ray"):
        results = tmp_path / executor
        p = run_cli("forgetting.sweep", str(suite), "--results-dir", str(results), "--workers", "1",
                    "--executor", executor, "--no-report", "--quiet")
        assert p.returncode == 0, p.stderr[-2000:]
        rows[executor] = {rid: pd.read_csv(results / rid / METRICS).drop(columns="wall_time")
                          for rid in complete_runs(results)}
    assert len(rows["here"]) == 2 and rows["ray"].keys() == rows["process"].keys() == rows["here"].keys()
    for rid, df in rows["here"].items():
        pd.testing.assert_frame_equal(rows["process"][rid], df, check_exact=True)
        pd.testing.assert_frame_equal(rows["ray"][rid], df, check_exact=True)


@pytest.mark.slow
def test_run_all_passes_arguments_through_and_returns_the_sweep_exit_code(tmp_path):
    env = dict(os.environ, FORGETTING_PYTHON=sys.executable)  # no .venv to make: the interpreter is ready
    results = tmp_path / "results"
    listed = subprocess.run([str(ROOT / "run_all.sh"), "--quick", "--list", "--results-dir", str(results)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    quick = load_suite(ROOT / "benchmarks" / "quick.toml")
    ids = {line.split()[1] for line in listed.stdout.splitlines() if line.startswith("new")}
    configs = quick.runs("results", default_data_dir())  # run ids hash the data files
    digits = {c.run_id for c in configs if c.benchmark == "split-digits"}
    assert digits <= ids <= {c.run_id for c in configs}
    bad = subprocess.run([str(ROOT / "run_all.sh"), "--quick", "--workers", "0", "--results-dir", str(results)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--workers" in bad.stderr
    assert not results.exists()


@pytest.mark.slow
def test_two_sweeps_on_one_results_dir_run_every_run_once_and_whole(tmp_path):
    """Two real sweep processes started together: every run runs once, with every task's rows."""
    import re

    epochs = 1
    suite = write(tmp_path, TINY.format(epochs=epochs).replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))
    results = tmp_path / "results"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "forgetting.sweep", str(suite), "--results-dir", str(results), "--workers", "1",
           "--no-report"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    ran = [int(re.search(r"(\d+) ran", e).group(1)) for e in errs]
    assert sum(ran) == 6, errs  # each of the 6 runs executed exactly once, by one sweep or the other
    done = complete_runs(results)
    assert len(done) == 6 and len(list(results.glob("*/manifest.json"))) == 6
    for rid, manifest in done.items():
        assert manifest["completed_tasks"] == 5 and "resumed_at" not in manifest
        rows = pd.read_csv(results / rid / METRICS)
        assert not rows.duplicated(ROW_KEY).any()
        assert len(rows) == 5 * (1 + 5 * epochs)
        assert sorted(rows.loc[rows["phase"] == "epoch", "trained_task"].unique()) == [0, 1, 2, 3, 4]
        assert not (results / rid / "run.lock").exists()  # every claim released


def test_a_sweep_above_the_confirmation_size_needs_yes(tmp_path, capsys):
    """1,200 runs: --list shows them all, running them needs --yes (nothing is written before)."""
    lambdas = ", ".join(str(i / 10) for i in range(200))
    suite = write(tmp_path, TINY.format(epochs=1).replace("seeds = [0, 1]", "seeds = [0, 1, 2, 3, 4, 5]")
                  .replace("grid.kl_lambda = [0, 1]", f"grid.kl_lambda = [{lambdas}]"))
    results = tmp_path / "r"
    assert sweep.main([str(suite), "--results-dir", str(results), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 1200 and all(line.startswith("new") for line in listed)
    assert sweep.main([str(suite), "--results-dir", str(results), "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1200 runs to run" in err and "--yes" in err
    assert not results.exists()


# --- sweeps that stop when told, and their logs --------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL to the driver", "SIGTERM to the driver", "Ctrl-C (SIGINT to the group)",
                                 "Ctrl-C to a sweep started with SIGINT ignored"])
def test_an_interrupted_sweep_stops_its_workers_and_starts_nothing_new(tmp_path, how):
    """SIGKILL or SIGTERM to the sweep left its worker running and starting new runs; Ctrl-C let more start."""
    suite = write(tmp_path, TINY.format(epochs=40).replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))  # 6 long runs
    results = tmp_path / "results"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "forgetting.sweep", str(suite), "--results-dir", str(results),
           "--workers", "1", "--no-report", "--quiet"]
    ignored = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if "ignored" in how else None  # a background job
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, preexec_fn=ignored,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = []
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and not runs_with_status(results, "running"):
            time.sleep(0.01)
        assert runs_with_status(results, "running"), "no run started"
        workers = [p for p in _children(proc.pid) if _alive(p)]
        assert workers
        if how.startswith("SIGKILL"):
            os.kill(proc.pid, signal.SIGKILL)
        elif how.startswith("SIGTERM"):
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers), "a worker outlived its sweep"
        started = set(p.parent.name for p in results.glob("*/manifest.json"))
        time.sleep(1.0)
        assert set(p.parent.name for p in results.glob("*/manifest.json")) == started
        assert len(started) == 1, "a run started after the interruption"
        [manifest] = [json.loads(p.read_text()) for p in results.glob("*/manifest.json")]
        assert manifest["status"] == "interrupted"  # the worker's run ended as one, its claim released
        assert not list(results.glob("*/run.lock"))
        if not how.startswith("SIGKILL"):
            assert proc.returncode == 130, proc.stderr.read()
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_each_sweep_invocation_writes_its_own_log(tmp_path):
    """Concurrent sweeps overwrote each other's RESULTS_DIR/sweep.json."""
    suite = write(tmp_path, TINY.format(epochs=1).replace("seeds = [0, 1]", "seeds = [0]")
                  .replace("grid.kl_lambda = [0, 1]", "kl_lambda = 1"))
    results = tmp_path / "results"
    args = [str(suite), "--results-dir", str(results), "--workers", "1", "--no-report", "--quiet"]
    assert sweep.main(args) == 0
    assert sweep.main(args) == 0
    logs = sorted((results / sweep.SWEEP_LOGS).glob("*.json"))
    assert len(logs) == 2 and not (results / "sweep.json").exists()
    found = sorted(([r["before"] for r in json.loads(p.read_text())["runs"].values()] for p in logs))
    assert found == [["complete"], ["new"]]
    assert all(json.loads(p.read_text())["pid"] == os.getpid() for p in logs)


def test_the_end_table_reads_names_as_text(tmp_path):
    """summary.csv read with pandas' guesses turned an experiment named NA into nan."""
    from forgetting.sweep_table import console_table

    cols = {"benchmark": ["split-digits"], "scenario": ["domain"], "method": ["NA"], "label": ["NA"],
            "status": ["complete"], "n_seeds": [2]}
    for key in ("average_accuracy", "old_task_accuracy", "forgetting_max"):
        cols.update({f"{key}_mean": [0.5], f"{key}_ci95_lo": [0.4], f"{key}_ci95_hi": [0.6], f"{key}_ci95_cut": [False]})
    pd.DataFrame(cols).to_csv(tmp_path / "summary.csv", index=False)
    line = console_table(tmp_path / "summary.csv").splitlines()[-1]
    assert line.split()[:3] == ["split-digits", "domain", "NA"] and "nan" not in line, line
