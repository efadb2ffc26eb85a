"""``--executor slurm``: a sweep's runs as a SLURM job array, through submitit.

Every run is one task of one array (``executor.batch()``), running ``executors.run_one`` as the
process executor's workers do: the same claims (``RUN_DIR/run.lock``), the same resume from the last
task boundary (a preempted or requeued task continues its run), the same rows. The results and data
directories must be on storage the compute nodes see. ``--slurm-cluster local`` runs the same jobs
with submitit's local executor (subprocesses on this machine): the tests use it, and it tries a setup
before a cluster does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .config import RunConfig
from .errors import BadInput, first_line
from .executors import Outcome, run_one
from .extras import require

CLUSTERS = ("slurm", "local")


def import_submitit():
    require("slurm", "--executor slurm", ("submitit",))
    import submitit

    return submitit


def execute_slurm(configs: list[RunConfig], workers: int, threads: int, on_result: Callable[[Outcome], None], *,
                  folder: str | Path, cluster: str = "slurm", partition: str | None = None, time_min: int = 60,
                  mem_gb: float | None = None, extra: dict | None = None) -> None:
    """Submit ``configs`` as one job array (at most ``workers`` tasks at a time) and report each ``Outcome``
    as its task ends; a task that dies (time limit, node failure) is reported failed with submitit's reason."""
    if cluster not in CLUSTERS:
        raise BadInput(f"--slurm-cluster: {cluster!r}, allowed: {', '.join(CLUSTERS)}")
    submitit = import_submitit()
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params = {"timeout_min": int(time_min), "cpus_per_task": int(threads), "name": "forgetting",
              "slurm_array_parallelism": int(workers)}
    if partition:
        params["slurm_partition"] = partition
    if mem_gb:
        params["mem_gb"] = mem_gb
    params.update(extra or {})
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(run_one, c.to_dict(), threads) for c in configs]
    pending = dict(zip(jobs, configs))
    import time

    while pending:
        done = [job for job in pending if job.done()]
        for job in done:
            config = pending.pop(job)
            try:
                outcome = job.result()
            except Exception as e:  # noqa: BLE001 - submitit's FailedJobError, UncompletedJobError, ...
                outcome = Outcome(config.run_id, "failed", f"slurm job {job.job_id}: {first_line(e)}")
            on_result(outcome)
        if pending and not done:
            time.sleep(0.5)
