"""--executor slurm keeps the process executor's claims: a task leaves a run that another live process has
claimed to it (a run killed mid-way and resumed by a task: tests/test_sweep_grid.py, within its 6-run
array, so that the check costs no job of its own)."""

from __future__ import annotations

import json
import os

import pytest

from forgetting.claim import LOCK, claim
from forgetting.registry import make_config
from forgetting.results import MANIFEST, METRICS


def test_a_slurm_task_leaves_a_run_another_live_process_claimed(tmp_path):
    """One task of one array (submitit's local executor: a subprocess, as on a node) for a run this test's
    process holds: the task reports it busy, runs nothing, writes nothing and keeps off the lock."""
    pytest.importorskip("submitit")
    from forgetting.executors_slurm import execute_slurm

    config = make_config(method="kl", epochs=1, batch_size=64, hidden=[16], dropout=0.0, device="cpu",
                         results_dir=str(tmp_path / "results"), progress=False)
    run_dir = tmp_path / "results" / config.run_id
    outcomes = []
    with claim(run_dir) as ours:  # this process: alive for the whole array
        execute_slurm([config], 1, 1, outcomes.append, folder=tmp_path / "slurm", cluster="local", time_min=5)
        assert ours.held() and json.loads((run_dir / LOCK).read_text())["pid"] == os.getpid()  # not taken over
    (outcome,) = outcomes
    assert outcome.status == "busy" and f"pid {os.getpid()}" in outcome.error, outcome
    assert not (run_dir / METRICS).exists() and not (run_dir / MANIFEST).exists()  # nothing run, nothing written
