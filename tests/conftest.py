"""Shared test fixtures: the real-data directory, running the CLI, small configs."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from forgetting.streams import default_data_dir

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)  # tests run in parallel workers on a 2-core machine


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data (or $FORGETTING_DATA_DIR); tests that need it skip with a reason when absent."""
    d = default_data_dir()
    if d is None or not Path(d).is_dir():
        pytest.skip("real data directory not found: set FORGETTING_DATA_DIR or place ../shared/data beside the project")
    return Path(d)


@pytest.fixture(scope="session")
def mnist_dir(data_dir) -> Path:
    if not (data_dir / "mnist").is_dir():
        pytest.skip(f"no mnist/ under {data_dir}")
    return data_dir


def subprocess_env(**extra: str) -> dict:
    """The environment of a command a test starts (a sweep, run_all.sh, a cluster's driver): this checkout first
    on ``PYTHONPATH`` (a ``PYTHONPATH`` in ``extra`` after it), one torch thread unless said, and ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), extra.pop("PYTHONPATH", ""), env.get("PYTHONPATH", ""))
                                        if p)
    env.update(extra)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def write_suite(folder: Path, text: str, name: str = "suite.toml") -> Path:
    """A suite file ``name`` in ``folder`` holding ``text``; its path."""
    path = Path(folder) / name
    path.write_text(text)
    return path


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: float = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` in a subprocess, as a user would; returns the finished process.
    ``env`` adds variables (a ``PYTHONPATH`` there goes after the project's)."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or ROOT, env=subprocess_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


class Crash(Exception):
    """Stands in for a kill right after a task boundary was saved."""


def cut_after_task(cfg, task: int, monkeypatch) -> Path:
    """Run ``cfg`` until the checkpoint after ``task`` is written and kill it there; returns its run directory."""
    from forgetting.results import RunWriter
    from forgetting.run import run_experiment

    original = RunWriter.task_done

    def crash(self, trainer, t, *save):  # save: the checkpoint's writing, which task_done schedules
        original(self, trainer, t, *save)
        if t == task:
            raise Crash()

    monkeypatch.setattr(RunWriter, "task_done", crash)
    with pytest.raises(Crash):
        run_experiment(cfg)
    monkeypatch.setattr(RunWriter, "task_done", original)
    return Path(cfg.results_dir) / cfg.run_id


def resumed_equals_whole(cfg, tmp_path, monkeypatch) -> Path:
    """Kill ``cfg``'s run after task 1, ``--resume`` it, and check its rows equal an uninterrupted run's
    (timings aside). Returns the resumed run's directory."""
    import pandas as pd

    from forgetting.results import read_run
    from forgetting.run import run_experiment

    cut_after_task(cfg, 1, monkeypatch)
    run_dir, _, status = run_experiment(cfg, resume=True)
    assert status == "complete"
    cfg.results_dir = str(tmp_path / "whole")
    whole_dir, _, _ = run_experiment(cfg)
    resumed, whole = read_run(run_dir)[1], read_run(whole_dir)[1]
    pd.testing.assert_frame_equal(resumed.drop(columns="wall_time"), whole.drop(columns="wall_time"), check_exact=True)
    return run_dir


def suite_rows_here(suite: Path, results: Path) -> dict:
    """Every run of the suite file ``suite``, run one after the other in this process: {run id: its rows
    without wall_time}. What an executor's runs (processes, Ray, SLURM) must give, without starting one."""
    import pandas as pd

    from forgetting.results import METRICS
    from forgetting.running import run_experiment
    from forgetting.suite import load_suite

    out = {}
    for config in load_suite(suite).runs(str(results.resolve()), default_data_dir()):
        run_dir, _, status = run_experiment(config, resolved=True)
        assert status == "complete", (config.run_id, status)
        out[config.run_id] = pd.read_csv(run_dir / METRICS).drop(columns="wall_time")
    return out


class FixedTeacher(nn.Module):
    """A frozen 'teacher' that returns fixed logits, in eval mode (for penalties checked by hand)."""

    def __init__(self, out):
        super().__init__()
        self.out = out
        self.eval()

    def forward(self, x):
        return self.out


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run first, the rest in their order. Under ``-n 2`` (with ``--dist worksteal``,
    set in pyproject.toml) the long tests are then spread over both workers while there is work left to
    balance them, instead of one worker finishing a 25 s test alone at the end. A slow test that uses a
    module-scoped fixture stays with its module (moving it would make the fixture twice)."""
    def first(item) -> bool:
        if item.get_closest_marker("slow") is None:
            return False
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        return not any(d.scope in ("module", "class", "package") for ds in defs.values() for d in ds)

    items.sort(key=lambda item: not first(item))  # stable: the order within each group is kept


def pytest_collection_finish(session):
    """What the test process imported to collect the tests (torch, transformers, Avalanche, Ray, ...: about a
    million objects in a worker) is frozen out of the garbage collector's full passes, as a command's process
    freezes its imports (forgetting/gc_freeze.py); collected first, so that no garbage is frozen with it."""
    gc.collect()
    gc.freeze()
