"""``python -m forgetting.sweep SUITE [SUITE ...]``: every run of one or more suites, resumable.

The suites are checked whole (``forgetting.suite``) and their data found before any run starts.
Runs whose results directory holds a complete manifest (same config hash) are skipped; the
others, unfinished ones included, run in worker processes (``--executor process``) or as Ray
tasks (``--executor ray``, on this machine or on a cluster). A run that fails is recorded and
the others go on; the sweep then writes the plots and summary and exits 1 listing the failures.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from . import registry
from .config import DEVICES, RunConfig
from .errors import EXIT_BAD_INPUT, BadInput
from .options import Option
from .results import MANIFEST, atomic_write_json, now
from .errors import OneLineParser
from .run import build_stream_for, ensure_writable
from .streams import default_data_dir
from .suite import Experiment, load_suite

PROG = "python -m forgetting.sweep"
EXECUTORS = ("process", "ray")
MAX_ATTEMPTS = 2  # a run whose worker process dies (killed, out of memory) is tried this many times
SWEEP_LOG = "sweep.json"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


WORKERS = Option("workers", int, cores(), "runs at a time (process executor; Ray schedules by its CPUs)", minimum=1)
THREADS = Option("threads", int, 1, "torch threads per run", minimum=1)


@dataclass
class Planned:
    config: RunConfig
    state: str  # new, unfinished (a killed or failed earlier attempt), complete


@dataclass
class Outcome:
    run_id: str
    status: str  # complete, skipped (found complete by the worker), failed, interrupted
    error: str | None = None
    seconds: float = 0.0


# --- planning ---------------------------------------------------------------------------------
def run_state(config: RunConfig) -> str:
    manifest = Path(config.results_dir) / config.run_id / MANIFEST
    if not manifest.is_file():
        return "new"
    try:
        status = json.loads(manifest.read_text()).get("status")
    except (OSError, ValueError):
        return "unfinished"
    return "complete" if status == "complete" else "unfinished"


def probe_data(experiment: Experiment, data_dir: str | None) -> str | None:
    """Why the experiment's stream cannot be built here (data missing or malformed), or None."""
    try:
        build_stream_for(experiment.runs("results", data_dir)[0])
    except BadInput as e:
        return str(e)
    return None


def plan(suite_paths: Sequence[str], results_dir: str, data_dir: str | None, device: str,
         note: Callable[[str], None] = print) -> list[Planned]:
    """Every run of the suites, in order, once each (same run id: first listing wins).

    Raises BadInput for a malformed suite or for data that a non-skippable experiment lacks.
    """
    suites = [load_suite(p) for p in suite_paths]  # all files checked before any data is read
    planned: dict[str, Planned] = {}
    probed: dict[str, str | None] = {}
    for suite in suites:
        for exp in suite.experiments:
            key = json.dumps([exp.benchmark, exp.model, exp.stream_options], sort_keys=True)
            if key not in probed:
                probed[key] = probe_data(exp, data_dir)
            if probed[key] is not None:
                if exp.if_data_missing == "skip":
                    note(f"skipping experiment {exp.name!r} ({exp.where}): {probed[key]}")
                    continue
                raise BadInput(f"{exp.where} ({exp.benchmark}): {probed[key]} "
                               "(or set if_data_missing = \"skip\" in the suite)")
            for config in exp.runs(results_dir, data_dir, device):
                if config.run_id not in planned:
                    planned[config.run_id] = Planned(config, run_state(config))
    return list(planned.values())


def describe(config: RunConfig) -> str:
    """A short label: stream, scenario, method with its non-default hyper-parameters, seed."""
    defaults = {o.name: o.default for o in registry.method_options(config.method.name)}
    hp = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in config.hparams.items() if defaults.get(k) != v)
    return f"{config.benchmark}/{config.scenario} {config.method.name}{' ' + hp if hp else ''} seed={config.seed}"


# --- one run, in a worker ---------------------------------------------------------------------
def run_one(config: dict, threads: int = 1) -> Outcome:
    """Run one config (resuming from its last task boundary where ``run_experiment`` can); never raises."""
    import torch

    from .run import run_experiment

    torch.set_num_threads(threads)
    cfg = RunConfig.from_dict(config)
    kwargs = {"resume": True} if "resume" in inspect.signature(run_experiment).parameters else {}
    t0 = time.perf_counter()
    try:
        _, _, status = run_experiment(cfg, **kwargs)
    except KeyboardInterrupt:
        return Outcome(cfg.run_id, "interrupted", "interrupted", time.perf_counter() - t0)
    except BaseException as e:  # noqa: BLE001 - one run's failure must not stop the sweep
        return Outcome(cfg.run_id, "failed", " ".join(f"{type(e).__name__}: {e}".split()), time.perf_counter() - t0)
    return Outcome(cfg.run_id, status, None, time.perf_counter() - t0)


def _died(config: RunConfig, why: str) -> Outcome:
    return Outcome(config.run_id, "failed", why)


# --- executors --------------------------------------------------------------------------------
def execute_processes(configs: list[RunConfig], workers: int, threads: int,
                      on_result: Callable[[Outcome], None]) -> None:
    """Worker processes (spawn: no inherited torch state), one run each at a time.

    A worker that dies (SIGKILL, out of memory) breaks the pool: the runs it took down are
    submitted again to a fresh pool, up to MAX_ATTEMPTS times each.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    attempts: dict[str, int] = {}
    pending = list(configs)
    while pending:
        saved = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the workers, read when torch loads
        pool = ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=ctx)
        try:
            futures = {pool.submit(run_one, c.to_dict(), threads): c for c in pending}
        finally:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = saved
        broken = []
        try:
            for fut in as_completed(futures):
                config = futures[fut]
                try:
                    on_result(fut.result())
                except BrokenProcessPool:
                    broken.append(config)
                except Exception as e:  # noqa: BLE001 - e.g. a result that could not be sent back
                    on_result(_died(config, f"{type(e).__name__}: {e}"))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        pending = []
        for config in broken:
            attempts[config.run_id] = attempts.get(config.run_id, 0) + 1
            if attempts[config.run_id] >= MAX_ATTEMPTS:
                on_result(_died(config, "its worker process died (killed, or out of memory)"))
            else:
                pending.append(config)


def import_ray():
    try:
        import ray
    except ImportError:
        raise BadInput("--executor ray needs the [ray] extra (ray not installed): pip install 'forgetting[ray]' "
                       "(or use --executor process)") from None
    return ray


def execute_ray(configs: list[RunConfig], workers: int, threads: int, address: str | None,
                on_result: Callable[[Outcome], None]) -> None:
    """Ray tasks: embedded on this machine (``workers`` CPUs) or on the cluster at ``address``.

    Embedded, the workers import this very checkout (PYTHONPATH); on a cluster this package is
    shipped to the nodes with the tasks (``py_modules``), which need its dependencies installed.
    """
    ray = import_ray()
    package_dir = Path(__file__).resolve().parent
    if address:
        ray.init(address=address, runtime_env={"py_modules": [str(package_dir)]})
    else:
        path = os.pathsep.join(p for p in (str(package_dir.parent), os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=workers, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        task = ray.remote(num_cpus=threads, max_retries=MAX_ATTEMPTS - 1)(run_one)
        pending = {task.remote(c.to_dict(), threads): c for c in configs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            config = pending.pop(done[0])
            try:
                on_result(ray.get(done[0]))
            except Exception as e:  # noqa: BLE001 - the worker died or the task could not run
                on_result(_died(config, " ".join(f"{type(e).__name__}: {e}".split())[:500]))
    finally:
        ray.shutdown()


# --- the command ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Run every run of the suites that is not complete yet, in worker "
                      "processes or as Ray tasks, then write the plots and summary. Suites are checked whole "
                      "before any run starts; a failed run is listed at the end (exit code 1) after the others.")
    p.add_argument("suites", nargs="+", metavar="SUITE", help="suite files (TOML), e.g. benchmarks/default.toml")
    p.add_argument("--results-dir", default="results", help="where run directories go; with --ray-address, a "
                   "directory every node sees (default: results)")
    p.add_argument("--data-dir", default=None, help="directory of local data sets (default: $FORGETTING_DATA_DIR, "
                   "else ../shared/data when it exists); with --ray-address, one every node sees")
    p.add_argument("--workers", default=WORKERS.default, help=f"{WORKERS.help} (default: the number of cores, "
                   f"{WORKERS.default})")
    p.add_argument("--threads", default=THREADS.default, help=f"{THREADS.help} (default: 1)")
    p.add_argument("--executor", default="process", help="process (worker processes on this machine) or ray "
                   "(Ray tasks; needs pip install 'forgetting[ray]') (default: process)")
    p.add_argument("--ray-address", default=None, help="join the Ray cluster at this address (e.g. ray://head:10001 "
                   "or auto) instead of starting Ray on this machine")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto for every run (default: auto)")
    p.add_argument("--report-dir", default=None, help="where the plots and summary go (default: RESULTS_DIR/report)")
    p.add_argument("--no-report", action="store_true", help="do not write the plots and summary")
    p.add_argument("--list", action="store_true", help="list the runs and whether each is complete; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--log-to", action="append", default=[], metavar="{tensorboard,mlflow,wandb}",
                   help="stream every run to an experiment tracker, and the report's figures as files of a "
                        "run named 'report' (repeatable; see python -m forgetting.run --help)")
    return p


def check_args(ns: argparse.Namespace) -> None:
    ns.workers = WORKERS.check(ns.workers)
    ns.threads = THREADS.check(ns.threads)
    if ns.executor not in EXECUTORS:
        raise BadInput(f"--executor: unknown executor {ns.executor!r}, allowed: {', '.join(EXECUTORS)}")
    if ns.ray_address and ns.executor != "ray":
        raise BadInput("--ray-address: only applies with --executor ray")
    if ns.device not in DEVICES:
        raise BadInput(f"--device: unknown device {ns.device!r}, allowed: {', '.join(DEVICES)}")
    if ns.data_dir is not None and not Path(ns.data_dir).is_dir():
        raise BadInput(f"--data-dir: {ns.data_dir!r} is not a directory")
    ensure_writable(ns.results_dir)
    from . import tracking

    ns.log_to = tracking.check(ns.log_to)
    if ns.executor == "ray":
        import_ray()


def write_report(run_dirs: list[Path], out: Path) -> list[Path]:
    from .plot import write_report as plot_report  # being written alongside; loaded only when needed

    return plot_report(run_dirs, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    say = (lambda *a, **k: None) if ns.quiet else (lambda *a, **k: print(*a, **k, file=sys.stderr, flush=True))
    try:
        check_args(ns)
        data_dir = ns.data_dir if ns.data_dir is not None else default_data_dir()
        # absolute paths: Ray workers do not share the driver's working directory
        data_dir = str(Path(data_dir).resolve()) if data_dir else None
        runs = plan(ns.suites, str(Path(ns.results_dir).resolve()), data_dir, ns.device, note=lambda m: print(f"{PROG}: {m}", file=sys.stderr))
    except BadInput as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if ns.list:
        for r in runs:
            print(f"{r.state:<10} {r.config.run_id}  {describe(r.config)}")
        return 0
    for r in runs:  # never part of a run id
        r.config.log_to = list(ns.log_to)
    if ns.log_to and not ns.list:
        from .tracking import prepare_stores

        prepare_stores(ns.log_to, ns.results_dir)  # one store made before the workers share it
    todo = [r.config for r in runs if r.state != "complete"]
    done_before = len(runs) - len(todo)
    say(f"{PROG}: {len(runs)} runs in {', '.join(ns.suites)}: {done_before} already complete, "
        f"{sum(r.state == 'unfinished' for r in runs)} unfinished to run again, {sum(r.state == 'new' for r in runs)} new")
    try:
        outcomes = execute(todo, ns)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; unfinished runs will run again next time", file=sys.stderr)
        return 130
    return finish(ns, runs, outcomes, say)


def execute(todo: list[RunConfig], ns: argparse.Namespace) -> dict[str, Outcome]:
    from . import progress

    labels = {c.run_id: describe(c) for c in todo}
    outcomes: dict[str, Outcome] = {}
    bar = progress.bar(len(todo), "sweep", not ns.quiet and bool(todo), unit="run", per_update=True)

    def on_result(o: Outcome) -> None:
        outcomes[o.run_id] = o
        failed = sum(x.status in ("failed", "interrupted") for x in outcomes.values())
        bar.set_postfix(failed=failed, refresh=False)
        bar.update(1)
        if o.status in ("failed", "interrupted"):
            bar.write(f"{PROG}: run {o.run_id} ({labels[o.run_id]}) {o.status}: {o.error}", file=sys.stderr)

    try:
        if todo and ns.executor == "ray":
            execute_ray(todo, ns.workers, ns.threads, ns.ray_address, on_result)
        elif todo:
            execute_processes(todo, ns.workers, ns.threads, on_result)
    finally:
        bar.close()
    return outcomes


def write_log(ns, runs: list[Planned], outcomes: dict[str, Outcome]) -> Path:
    """RESULTS_DIR/sweep.json: what this sweep found and did, run by run."""
    entries = {}
    for r in runs:
        o = outcomes.get(r.config.run_id)
        entries[r.config.run_id] = {"label": describe(r.config), "before": r.state,
                                    "status": o.status if o else "complete", "error": o.error if o else None,
                                    "seconds": round(o.seconds, 3) if o else None}
    path = Path(ns.results_dir) / SWEEP_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"ended": now(), "suites": list(ns.suites), "runs": entries})
    return path


def console_table(summary_csv: Path) -> str:
    """What each experiment kept of its old tasks, one line each, from the report's summary.csv."""
    import pandas as pd

    if not summary_csv.is_file():
        return ""
    df = pd.read_csv(summary_csv)
    if df.empty:
        return ""

    def pct(row, key):  # the interval as the summary gives it: cut to the quantity's range, † when cut
        m, lo, hi = row[f"{key}_mean"], row[f"{key}_ci95_lo"], row[f"{key}_ci95_hi"]
        if pd.isna(m):
            return "-"
        cut = "†" if str(row.get(f"{key}_ci95_cut", False)) == "True" else " "
        return f"{100 * m:5.1f}" + ("" if pd.isna(lo) else f" [{100 * lo:5.1f},{100 * hi:5.1f}]{cut}")

    lines = ["", "old tasks kept (after the last task; mean [95% CI over seeds, † cut to the possible range], in %):",
             f"{'benchmark':<16}{'scenario':<9}{'method':<30}{'seeds':>6}  {'avg acc':>20}  "
             f"{'old-task acc':>20}  {'forgetting':>20}"]
    for _, row in df.iterrows():
        label = str(row["label"]) + ("" if row["status"] == "complete" else " (unfinished)")
        lines.append(f"{row['benchmark']:<16}{row['scenario']:<9}{label[:29]:<30}{int(row['n_seeds']):>6}  "
                     f"{pct(row, 'average_accuracy'):>20}  {pct(row, 'old_task_accuracy'):>20}  "
                     f"{pct(row, 'forgetting_max'):>20}")
    return "\n".join(lines)


def finish(ns, runs: list[Planned], outcomes: dict[str, Outcome], say) -> int:
    """The sweep log, the report, the failures listed; the exit code."""
    failed = {k: o for k, o in outcomes.items() if o.status in ("failed", "interrupted")}
    log = write_log(ns, runs, outcomes)
    ran = sum(o.status == "complete" for o in outcomes.values())
    say(f"{PROG}: {len(runs)} runs: {len(runs) - len(outcomes)} were already complete, {ran} ran, {len(failed)} failed")
    code = 0
    if not ns.no_report:
        complete = [Path(ns.results_dir) / r.config.run_id for r in runs if r.config.run_id not in failed]
        out = Path(ns.report_dir) if ns.report_dir else Path(ns.results_dir) / "report"
        try:
            files = write_report(complete, out)
        except ModuleNotFoundError as e:
            if e.name != "forgetting.plot":
                raise
            print(f"{PROG}: no report: this version has no forgetting.plot (use --no-report)", file=sys.stderr)
            code = 1
        except BadInput as e:
            print(f"{PROG}: no report: {e}", file=sys.stderr)
            code = 1
        else:
            table = console_table(out / "summary.csv")
            if table:
                print(table)
            print(f"tables and figures ({len(files)} files): {out}")
            if ns.log_to:
                from .tracking import log_report

                log_report(ns.log_to, files, out, ns.results_dir)
    print(f"results: {ns.results_dir} (log of this sweep: {log})")
    if failed:
        print(f"{PROG}: {len(failed)} of {len(runs)} runs failed:", file=sys.stderr)
        labels = {r.config.run_id: describe(r.config) for r in runs}
        for rid, o in failed.items():
            print(f"  {rid} ({labels.get(rid, '')}): {o.error} [{Path(ns.results_dir) / rid}]", file=sys.stderr)
        code = 1
    return code


if __name__ == "__main__":
    # Run through the importable module, so that worker processes and Ray find run_one by its name.
    from forgetting.sweep import main as _main

    sys.exit(_main())
