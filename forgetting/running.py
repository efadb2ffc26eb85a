"""Running a prepared run: the claim, the recorder the trainer reports to, resume from a task boundary,
and how the run ends (``run_experiment``)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import contextlib

from . import distributed, registry
from .checkpoint import CHECKPOINTS, boundary_files, clear_checkpoints, restore_boundary, restore_last_readable, \
    write_boundary
from .claim import RunBusy, check_free, claim
from .config import RunConfig
from .errors import BadInput, RunFailed, WriteFailed
from .objectives import objective_for
from .preparing import determinism_settings, prepare, resolve_device
from .results import MANIFEST, METRICS, RunWriter, read_metrics_csv, read_run

log = logging.getLogger("forgetting")


def ensure_writable(results_dir: str) -> None:
    probe = Path(results_dir)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise BadInput(f"--results-dir: {results_dir!r} is inside a file ({probe}), not a directory")
    if not os.access(probe, os.W_OK):
        raise BadInput(f"--results-dir: {results_dir!r} cannot be written")


class Recorder:
    """What the trainer reports to: rows go to the writer; at a task boundary the rows are flushed,
    the run saves its checkpoint, then the writer marks the task's rows complete."""

    def __init__(self, writer: RunWriter):
        self.writer = writer

    def elapsed(self) -> float:
        return self.writer.elapsed()

    def add_rows(self, rows) -> None:
        self.writer.add_rows(rows)

    def add_losses(self, step: int, parts: dict) -> None:
        self.writer.add_losses(step, parts)

    def task_done(self, trainer, task: int) -> None:
        # the checkpoint as it is now (serialized here), written after the rows are on disk (resume keeps them)
        files = boundary_files(trainer, task, self.writer.elapsed())
        writer = self.writer
        writer.task_done(trainer, task, lambda: writer.write(writer.dir / CHECKPOINTS,
                                                             lambda _: write_boundary(writer.dir, files)))


def ray_node() -> dict:
    """``{"ray_node_id": ...}`` when this run is a Ray task (which node of a cluster ran it), else {}."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return {}
    return {"ray_node_id": ray.get_runtime_context().get_node_id()}


def _previous(run_dir: Path):
    """(rows, manifest) of an earlier attempt, or (None, None) when there is none or it does not read."""
    if not (run_dir / MANIFEST).is_file():
        return None, None
    try:
        _, rows, manifest = read_run(run_dir)
    except (OSError, ValueError):
        return None, None  # unreadable leftovers: start again
    return rows, manifest


def _end(writer: RunWriter, status: str, error: str | None = None, **fields) -> None:
    """Record how the run ended; a manifest that cannot be written (full disk) is left as it was."""
    try:
        writer.wait()  # the last boundary's checkpoint written (the manifest is not written from two threads)
    except WriteFailed:
        pass
    try:
        writer.update(**fields)
        writer.finish(status, error)
    except WriteFailed:
        pass


def run_experiment(config: RunConfig, force: bool = False, resume: bool = False, resolved: bool = False):
    """Run one experiment; returns (run directory, metric rows as a DataFrame, status).

    A complete run with the same config is not run again (status ``skipped``) unless ``force``.
    With ``resume``, an unfinished one continues from its last task-boundary checkpoint that
    reads and ends with the same rows as an uninterrupted run; otherwise it starts again from
    scratch. The run is claimed first (``forgetting.claim``): RunBusy when another live process
    runs it. The manifest says ``complete`` only when every task's rows are there. ``resolved``: the
    caller already resolved ``config`` (the CLI, a suite), so it is not resolved again.
    """
    if force and resume:
        raise BadInput("--resume and --force together: pick one (--resume continues an unfinished run from its last "
                       "checkpoint, --force runs it again from the start)")
    if not resolved:
        config = registry.resolve(config)
    distributed.check(config, distributed.launched_size())  # every rank refuses alike, before anything is written
    ensure_writable(config.results_dir)
    run_dir = Path(config.results_dir) / config.run_id
    world, device = distributed.init(resolve_device(config.device))  # one process unless a launcher started several
    # rank 0 alone looks at the run directory and decides; the other ranks follow (no rank waits for one that left)
    decision = _decide(run_dir, force, claimed=False) if world.main else None
    decision = world.broadcast(decision)
    if decision[0] != "run":
        return _follow(decision, run_dir)
    device, stream, model, methods = prepare(config, device)  # checks everything before a file is written
    distributed.check_model(model, world.size, config.model.name)
    objective = objective_for(stream)  # what the reports show of this run is the objective's to say
    extra = {"determinism": determinism_settings(device), "data": config.data_fingerprint, **ray_node(),
             "objective": objective.name, "report_measures": [list(m) for m in objective.report_measures],
             "distributed": world.describe(config.batch_size)}
    writer = RunWriter(config, str(device), extra_manifest=extra) if world.main else None
    trainer_cls = registry.runner(config.method.name)  # our Trainer, or Avalanche's loop (imported only then)
    trainer = trainer_cls(config, stream, model, methods, device,
                          recorder=Recorder(writer) if world.main else None)  # may refuse: BadInput
    trainer.world = world
    if world.fsdp:  # the launch selected FSDP: the live model sharded over the ranks, before any optimiser is built
        from .fsdp import Sharding

        trainer.sharding = Sharding(trainer.model, device)
    with claim(run_dir) if world.main else contextlib.nullcontext():
        decision = _decide(run_dir, force, claimed=True) if world.main else None  # again, under the claim
        decision = world.broadcast(decision)
        if decision[0] != "run":
            return _follow(decision, run_dir)
        if not world.main:
            return _run_follower(config, run_dir, stream, trainer, world, resume)
        old_rows, previous = _previous(run_dir)
        return _run_claimed(config, run_dir, stream, writer, trainer, old_rows, previous, resume, world)


def _decide(run_dir: Path, force: bool, claimed: bool) -> tuple:
    """Rank 0's decision: ("skipped", rows) for a complete run (unless ``force``), ("busy", why) when another
    process runs it, else ("run",)."""
    if not force:
        old_rows, previous = _previous(run_dir)
        if previous is not None and previous.get("status") == "complete":
            return ("skipped", old_rows)
    if not claimed:
        try:
            check_free(run_dir)  # another process runs it: say so before preparing (a stream can take minutes)
        except RunBusy as e:
            return ("busy", e.lock, e.owner)
    return ("run",)


def _follow(decision: tuple, run_dir: Path):
    if decision[0] == "busy":
        raise RunBusy(decision[1], decision[2])
    return run_dir, decision[1], "skipped"


def _run_follower(config, run_dir, stream, trainer, world, resume):
    """A rank other than 0: the same training on its shards, resumed from the boundary rank 0 chose; it writes
    nothing (no rows: it evaluates nothing)."""
    last = world.broadcast(None)
    if last is not None:
        restore_boundary(run_dir, trainer, last)
    trainer.fit(start_task=0 if last is None else last + 1)
    return run_dir, None, "complete"


def _run_claimed(config, run_dir, stream, writer, trainer, old_rows, previous, resume, world=distributed.SINGLE):
    last, elapsed = None, 0.0
    if resume and previous is not None and old_rows is not None:
        last, elapsed, unreadable = restore_last_readable(run_dir, trainer)
        if unreadable:
            then = f"resuming from the end of task {last}" if last is not None else "starting again from the first task"
            log.warning("--resume: cannot read checkpoint %s; %s", "; nor ".join(unreadable), then)
    world.broadcast(last)  # the other ranks restore the same boundary
    try:
        if last is not None:
            kept = old_rows[(old_rows["phase"] == "init") | (old_rows["trained_task"] <= last)]
            writer.manifest["started"] = previous.get("started", writer.manifest["started"])
            writer.manifest["resumed_at"] = list(previous.get("resumed_at", []))
            if "stopped_at" in previous:  # --stop-at-accuracy: where the kept tasks ended
                writer.manifest["stopped_at"] = {k: v for k, v in previous["stopped_at"].items() if int(k) <= last}
            writer.resume_from(kept.to_dict("records"), elapsed, last)
        else:
            clear_checkpoints(run_dir)
        writer.open()
        trainer.fit(start_task=0 if last is None else last + 1)
        writer.wait()  # the last checkpoint on disk; a failure to write it fails the run here
        missing = writer.missing_tasks(stream.n_learned, config.epochs)
        if missing:
            raise RunFailed(f"the rows of tasks {missing} are missing at the end of the run", tasks=missing)
    except RunFailed as e:
        _end(writer, "failed", str(e), failed_at=e.where or writer.position)
        raise
    except KeyboardInterrupt:
        _end(writer, "interrupted", "interrupted by the user")
        raise
    except BaseException as e:
        _end(writer, "failed", f"{type(e).__name__}: {e}")
        raise
    writer.finish("complete")
    # the rows as written, read as every reader reads them: a second call that skips the run gets the same frame
    return run_dir, read_metrics_csv(run_dir / METRICS), "complete"


