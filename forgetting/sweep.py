"""``python -m forgetting.sweep SUITE [SUITE ...]``: every run of one or more suites, resumable.

The suites are checked whole (``forgetting.suite``) and their data found before any run starts.
Runs whose results directory holds a complete manifest (same config hash) are skipped; the
others, unfinished ones included, run in worker processes (``--executor process``) or as Ray
tasks (``--executor ray``, on this machine or on a cluster). A run that fails is recorded and
the others go on; the sweep then writes the plots and summary and exits 1 listing the failures.
Without ``--results-dir`` the runs go to ``results/<suite name>`` (a one-off grid: ``results/<its budget>``,
``forgetting.budget``), so that studies of different budgets never share a folder by accident.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from . import registry
from .budget import grid_results_dir, suite_results_dir
from .config import DEVICES, RunConfig
from .errors import EXIT_BAD_INPUT, BadInput, OneLineParser, command_name
from .executors import EXECUTORS, Outcome, execute_processes, execute_ray, import_ray
from .gc_freeze import freeze_after_imports
from .options import Option
from .results import MANIFEST, atomic_write_json, now
from .preparing import build_stream_for
from .running import ensure_writable
from .streams import default_data_dir
from .suite import load_suite
from .sweep_grid import grid_configs, split_run_args
from .sweep_table import console_table

PROG = command_name("sweep")  # what the messages call this command: forgetting-sweep or python -m forgetting.sweep
SWEEP_LOGS = "sweeps"  # RESULTS_DIR/sweeps/<start time>-<host>-<pid>.json: one log per invocation
CONFIRM_ABOVE = 1000  # a sweep of more runs than this starts only with --yes: a typo in a grid can mean days


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
    run_id: str  # the config's, computed once


# --- planning ---------------------------------------------------------------------------------
def run_state(config: RunConfig, run_id: str) -> str:
    manifest = Path(config.results_dir) / run_id / MANIFEST
    if not manifest.is_file():
        return "new"
    try:
        status = json.loads(manifest.read_text()).get("status")
    except (OSError, ValueError):
        return "unfinished"
    return "complete" if status == "complete" else "unfinished"


def probe_data(config: RunConfig) -> str | None:
    """Why the stream of an experiment's first run cannot be built here (data missing or malformed), or None."""
    try:
        build_stream_for(config)
    except BadInput as e:
        return str(e)
    return None


def with_download(configs: list[RunConfig]) -> list[RunConfig]:
    """``--download`` for every run whose stream can fetch its data (a setting, not hashed), its data digests
    taken where the download puts the files (as ``forgetting-run --download`` takes them)."""
    for c in configs:
        if any(o.name == "download" for o in registry.stream_options(c.benchmark)):
            c.stream.settings["download"] = True
            c.data_fingerprint = registry.fingerprint(registry.stream(c.benchmark), c.stream, c.data_dir)
    return configs


def plan(suite_paths: Sequence[str], results_dir: str | None, data_dir: str | None, device: str,
         note: Callable[[str], None] = print, grid: dict | None = None, download: bool = False,
         skipped: list | None = None) -> list[Planned]:
    """Every run of the suites (or of the command-line ``grid``), in order, once each (same run id: first
    listing wins). ``download``: streams that can fetch missing data do, before any run starts (the ids
    are then computed on the files fetched). Experiments skipped for missing data are appended to ``skipped``.
    ``results_dir`` None (a grid only): ``results/<the grid's budget>`` made absolute (``forgetting.budget``).

    Raises BadInput for a malformed suite or for data that a non-skippable experiment lacks.
    """
    suites = [load_suite(p) for p in suite_paths]  # all files checked before any data is read
    planned: dict[str, Planned] = {}
    if grid is not None:  # a one-off grid from the command line (forgetting.sweep_grid)
        configs = grid_configs(grid["axes"], grid["seeds"], grid["run_args"], results_dir=results_dir,
                               data_dir=data_dir, device=device)
        if results_dir is None:
            chosen = str(Path(grid_results_dir(configs)).resolve())
            for c in configs:
                c.results_dir = chosen
        problem = probe_data(configs[0])
        if problem is not None:
            raise BadInput(f"the runs after --: {problem}")
        return [Planned(c, run_state(c, c.run_id), c.run_id) for c in {c.run_id: c for c in configs}.values()]
    probed: dict[str, str | None] = {}
    for suite in suites:
        for exp in suite.experiments:
            configs = exp.runs(results_dir, data_dir, device)  # each resolved once (ms per run)
            key = json.dumps([exp.benchmark, exp.model, exp.stream_options], sort_keys=True)
            if key not in probed:
                probed[key] = probe_data(with_download(configs[:1])[0] if download else configs[0])
                if download and probed[key] is None:  # the files are there now: ids hash their content
                    configs = exp.runs(results_dir, data_dir, device)
            if download:
                with_download(configs)
            if probed[key] is not None:
                if exp.if_data_missing == "skip":
                    note(f"skipping experiment {exp.name!r} ({exp.where}): {probed[key]}")
                    if skipped is not None:
                        skipped.append((exp.name, exp.benchmark))
                    continue
                raise BadInput(f"{exp.where} ({exp.benchmark}): {probed[key]} "
                               "(or set if_data_missing = \"skip\" in the suite)")
            for config in configs:
                run_id = config.run_id
                if run_id not in planned:
                    planned[run_id] = Planned(config, run_state(config, run_id), run_id)
    return list(planned.values())


@functools.lru_cache(maxsize=None)
def _method_defaults(spec: str) -> dict:
    return {o.name: o.default for o in registry.method_options(spec)}


def describe(config: RunConfig) -> str:
    """A short label: stream, scenario, method with its non-default hyper-parameters, seed."""
    defaults = _method_defaults(config.method.name)
    hp = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in config.hparams.items() if defaults.get(k) != v)
    return f"{config.benchmark}/{config.scenario} {config.method.name}{' ' + hp if hp else ''} seed={config.seed}"


# --- the command ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Run every run of the suites that is not complete yet, in worker "
                      "processes or as Ray tasks, then write the plots and summary. Suites are checked whole "
                      "before any run starts; a failed run is listed at the end (exit code 1) after the others.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"forgetting {__version__}")
    p.add_argument("suites", nargs="*", metavar="SUITE", help="suite files (TOML, docs/SUITES.md), e.g. "
                   "benchmarks/default.toml; or none, and forgetting-run's options after -- (a one-off grid)")
    p.add_argument("--grid", action="append", default=[], metavar="OPTION=V1,V2,...",
                   help="with run options after --: one run per value (repeatable: the product), e.g. "
                        "--grid kl_lambda=0,0.5,1 -- --benchmark split-digits --method kl")
    p.add_argument("--seeds", default=None, metavar="SEEDS",
                   help="with run options after --: every grid point at each seed, e.g. 0-2 or 0,3,7")
    p.add_argument("--results-dir", default=None, help="where run directories go; with --ray-address, a "
                   "directory every node sees (default: results/<suite name>, e.g. results/quick; a grid: "
                   "results/<its runs' budget>, e.g. results/epochs=1,batch_size=32)")
    p.add_argument("--data-dir", default=None, help="directory of local data sets (default: $FORGETTING_DATA_DIR, "
                   "else ../shared/data when it exists); with --ray-address, one every node sees")
    p.add_argument("--workers", default=WORKERS.default, help=f"{WORKERS.help} (default: the number of cores, "
                   f"{WORKERS.default})")
    p.add_argument("--threads", default=THREADS.default, help=f"{THREADS.help} (default: 1)")
    p.add_argument("--executor", default="process", metavar="{" + ",".join(EXECUTORS) + "}",
                   help="process (worker processes on this machine), ray "
                   "(Ray tasks; needs pip install 'forgetting[ray]') or slurm (a SLURM job array through submitit; "
                   "needs pip install 'forgetting[slurm]') (default: process)")
    p.add_argument("--slurm-cluster", default="slurm", metavar="{slurm,local}",
                   help="with --executor slurm: slurm (sbatch, a job array) or local (submitit's local executor: "
                        "the same jobs as subprocesses here, to try a setup) (default: slurm)")
    p.add_argument("--slurm-partition", default=None, help="with --executor slurm: the partition (default: the "
                   "cluster's)")
    p.add_argument("--slurm-time", default=60, type=int, metavar="MINUTES",
                   help="with --executor slurm: each run's time limit in minutes (default: 60); a run cut by it "
                        "continues from its last task boundary when the sweep is run again")
    p.add_argument("--slurm-folder", default=None, help="with --executor slurm: where submitit keeps the jobs' "
                   "scripts and logs (default: RESULTS_DIR/slurm), on storage the nodes see")
    p.add_argument("--ray-address", default=None, help="join the Ray cluster at this address (e.g. ray://head:10001 "
                   "or auto) instead of starting Ray on this machine")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto for every run (default: auto)")
    p.add_argument("--download", action="store_true", help="fetch the data of streams that can (MNIST, CIFAR: "
                   "torchvision; uci-sentiment, ag-news, clinc150: the Hugging Face hub) before any run starts, "
                   "into --data-dir or the download cache")
    p.add_argument("--report-dir", default=None, help="where the plots and summary go (default: RESULTS_DIR/report)")
    p.add_argument("--no-report", action="store_true", help="do not write the plots and summary")
    p.add_argument("--search", default=None, type=int, metavar="N",
                   help="a search instead of the grid: N trials over the suite's grid.OPTION ranges through Optuna "
                        "(one experiment, one method; each trial runs every seed as normal runs; the study in "
                        "RESULTS_DIR/search.db continues when run again; needs pip install 'forgetting[search]')")
    p.add_argument("--objective", default="average_accuracy", metavar="{average_accuracy,forgetting,pareto}",
                   help="with --search: maximise the final average accuracy, minimise the max-based forgetting, or "
                        "pareto: new-task and old-task accuracy both (default: average_accuracy)")
    p.add_argument("--list", action="store_true", help="list the runs and whether each is complete; run nothing")
    p.add_argument("--yes", action="store_true", help=f"run even when more than {CONFIRM_ABOVE} runs are to run "
                   "(without it such a sweep stops before starting, with the count)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--log-to", action="append", default=[], metavar="{tensorboard,mlflow,wandb}",
                   help="stream every run to an experiment tracker, and the report's figures as files of a "
                        "run named 'report' (repeatable; see python -m forgetting.run --help)")
    return p


def check_args(ns: argparse.Namespace) -> None:
    ns.workers = WORKERS.check(ns.workers)
    ns.threads = THREADS.check(ns.threads)
    ns.run_args = getattr(ns, "run_args", None)
    if ns.run_args is None and not ns.suites:
        raise BadInput("no suite: give suite files, or forgetting-run's options after -- (e.g. --grid "
                       "kl_lambda=0,1 --seeds 0-2 -- --benchmark split-digits --method kl)")
    if ns.run_args is not None and ns.suites:
        raise BadInput(f"suite files and run options after -- together: give one or the other (got {ns.suites[0]!r})")
    if ns.run_args is None and (ns.grid or ns.seeds is not None):
        raise BadInput("--grid and --seeds take forgetting-run's options after --, e.g. --grid kl_lambda=0,1 -- "
                       "--method kl")
    if ns.run_args is not None and not ns.run_args and not ns.grid and ns.seeds is None:
        raise BadInput("nothing after --: give forgetting-run's options, with --grid and/or --seeds before --")
    if getattr(ns, "search", None) is not None:
        if ns.search < 1:
            raise BadInput(f"--search: {ns.search} trials, allowed: at least 1")
        from .sweep_search import OBJECTIVES, import_optuna

        if ns.objective not in OBJECTIVES:
            raise BadInput(f"--objective: {ns.objective!r}, allowed: {', '.join(OBJECTIVES)}")
        import_optuna()
    if ns.executor not in EXECUTORS:
        raise BadInput(f"--executor: unknown executor {ns.executor!r}, allowed: {', '.join(EXECUTORS)}")
    if ns.ray_address and ns.executor != "ray":
        raise BadInput("--ray-address: only applies with --executor ray")
    if ns.device not in DEVICES:
        raise BadInput(f"--device: unknown device {ns.device!r}, allowed: {', '.join(DEVICES)}")
    if ns.data_dir is not None and not Path(ns.data_dir).is_dir():
        raise BadInput(f"--data-dir: {ns.data_dir!r} is not a directory")
    if ns.results_dir is not None:  # the default is chosen once the suites or the grid are read
        ensure_writable(ns.results_dir)
    from . import tracking

    ns.log_to = tracking.check(ns.log_to)
    if ns.executor == "ray":
        import_ray()
    if getattr(ns, "slurm_partition", None) and ns.executor != "slurm":
        raise BadInput("--slurm-partition: only applies with --executor slurm")
    if ns.executor == "slurm":
        from .executors_slurm import CLUSTERS, import_submitit

        if ns.slurm_cluster not in CLUSTERS:
            raise BadInput(f"--slurm-cluster: {ns.slurm_cluster!r}, allowed: {', '.join(CLUSTERS)}")
        if ns.slurm_time < 1:
            raise BadInput(f"--slurm-time: {ns.slurm_time} minutes, allowed: at least 1")
        import_submitit()


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the command's own process (console script, python -m): see gc_freeze
        freeze_after_imports()
    parser = build_parser()
    argv, run_args = split_run_args(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(argv)
    ns.run_args = run_args
    say = (lambda *a, **k: None) if ns.quiet else (lambda *a, **k: print(*a, **k, file=sys.stderr, flush=True))
    try:
        check_args(ns)
        data_dir = ns.data_dir if ns.data_dir is not None else default_data_dir()
        # absolute paths: Ray workers do not share the driver's working directory
        data_dir = str(Path(data_dir).resolve()) if data_dir else None
        grid = None if run_args is None else {"axes": ns.grid, "seeds": ns.seeds, "run_args": run_args}
        if ns.results_dir is None and ns.suites:  # results/<suite name>: one study, one folder
            ns.results_dir = suite_results_dir(load_suite(p).name for p in ns.suites)
            ensure_writable(ns.results_dir)
        ns.skipped = []
        runs = plan(ns.suites, str(Path(ns.results_dir).resolve()) if ns.results_dir else None, data_dir, ns.device,
                    note=lambda m: print(f"{PROG}: {m}", file=sys.stderr), grid=grid, download=ns.download,
                    skipped=ns.skipped)
        if ns.results_dir is None:  # a grid: results/<its runs' budget>, where plan put them
            ns.results_dir = grid_results_dir(r.config for r in runs)
            ensure_writable(ns.results_dir)
    except BadInput as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if getattr(ns, "search", None) is not None:
        return search(ns, say)
    if ns.list:
        for r in runs:
            print(f"{r.state:<10} {r.run_id}  {describe(r.config)}")
        say(f"{PROG}: {len(runs)} runs in {ns.results_dir}")
        return 0
    for r in runs:  # never part of a run id
        r.config.log_to = list(ns.log_to)
    if ns.log_to and not ns.list:
        from .tracking import prepare_stores

        prepare_stores(ns.log_to, ns.results_dir)  # one store made before the workers share it
    todo = [r.config for r in runs if r.state != "complete"]
    if len(todo) > CONFIRM_ABOVE and not ns.yes:
        print(f"{PROG}: error: {len(todo)} runs to run, more than {CONFIRM_ABOVE}: pass --yes to start them "
              "(--list shows them)", file=sys.stderr)
        return EXIT_BAD_INPUT
    done_before = len(runs) - len(todo)
    where = ", ".join(ns.suites) if ns.suites else "the grid"
    say(f"{PROG}: {len(runs)} runs in {where}: {done_before} already complete, "
        f"{sum(r.state == 'unfinished' for r in runs)} unfinished to run again, {sum(r.state == 'new' for r in runs)} new")
    ns.started = now()
    main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
    # SIGTERM stops it as Ctrl-C does; and Ctrl-C stops it even where it was started with SIGINT ignored (a shell's
    # background job inherits that, while the workers set their own handler: they would stop and the driver not)
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
    try:
        outcomes = execute(todo, ns)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no further run started, unfinished runs will run again next time",
              file=sys.stderr)
        return 130
    finally:
        for s, handler in previous.items():
            if handler is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(s, handler)
    return finish(ns, runs, outcomes, say)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def search(ns: argparse.Namespace, say) -> int:
    """``--search N``: N trials of an Optuna study over the suite's ranges, each a set of normal runs."""
    from .sweep_search import run_search

    try:
        if len(ns.suites) != 1 or len(load_suite(ns.suites[0]).experiments) != 1:
            raise BadInput("--search: give one suite with one [[experiment]] (its grid.OPTION ranges are searched)")
        suite = load_suite(ns.suites[0])
        exp = suite.experiments[0]
        data_dir = ns.data_dir if ns.data_dir is not None else default_data_dir()
        configs = exp.runs(str(Path(ns.results_dir).resolve()), data_dir, ns.device)
        problem = probe_data(configs[0])
        if problem is not None:
            raise BadInput(f"{exp.where}: {problem}")

        def run_trial(trial_configs: list[RunConfig]) -> dict[str, Outcome]:
            todo = [c for c in trial_configs if run_state(c, c.run_id) != "complete"]
            return execute(todo, argparse.Namespace(**{**vars(ns), "quiet": True})) if todo else {}

        trials = run_search(exp, configs, ns.search, ns.objective, str(Path(ns.results_dir).resolve()), run_trial,
                            lambda m: say(f"{PROG}: {m}"), study_name=f"{suite.name}/{exp.name}")
    except BadInput as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for t in sorted(trials, key=lambda t: t["number"]):
        values = ", ".join(f"{v:.4f}" for v in t["values"])
        print(f"{'*' if t['best'] else ' '} trial {t['number']:>3}  {ns.objective} {values}  {t['params']}  "
              f"runs {' '.join(t['run_ids'])}")
    print(f"{len(trials)} trials in {Path(ns.results_dir) / 'search.db'} (* best); figures of every trial's runs: "
          f"python -m forgetting.plot {ns.results_dir}")
    return 0


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
            bar.write(f"{PROG}: run {o.run_id} ({labels.get(o.run_id, '')}) {o.status}: {o.error}", file=sys.stderr)

    try:
        if todo and ns.executor == "slurm":
            from .executors_slurm import execute_slurm

            execute_slurm(todo, ns.workers, ns.threads, on_result, cluster=ns.slurm_cluster,
                          folder=ns.slurm_folder or Path(ns.results_dir) / "slurm", partition=ns.slurm_partition,
                          time_min=ns.slurm_time)
        elif todo and ns.executor == "ray":
            execute_ray(todo, ns.workers, ns.threads, ns.ray_address, on_result)
        elif todo:
            execute_processes(todo, ns.workers, ns.threads, on_result)
    finally:
        bar.close()
    return outcomes


def log_path(results_dir: str | Path, started: str) -> Path:
    """This invocation's log: its own file, so sweeps on one results directory never overwrite each other's."""
    stamp = started.replace("-", "").replace(":", "").replace("+0000", "Z")
    return Path(results_dir) / SWEEP_LOGS / f"{stamp}-{platform.node() or 'host'}-{os.getpid()}.json"


def write_log(ns, runs: list[Planned], outcomes: dict[str, Outcome]) -> Path:
    """RESULTS_DIR/sweeps/<start>-<host>-<pid>.json: what this sweep found and did, run by run."""
    entries = {}
    for r in runs:
        o = outcomes.get(r.run_id)
        entries[r.run_id] = {"label": describe(r.config), "before": r.state,
                                    "status": o.status if o else "complete", "error": o.error if o else None,
                                    "seconds": round(o.seconds, 3) if o else None}
    started = getattr(ns, "started", None) or now()
    path = log_path(ns.results_dir, started)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = {"grid": ns.grid, "seeds": ns.seeds, "run_args": ns.run_args} if getattr(ns, "run_args", None) is not None else {}
    atomic_write_json(path, {"started": started, "ended": now(), "host": platform.node(), "pid": os.getpid(),
                             "suites": list(ns.suites), **grid, "runs": entries})
    return path


def finish(ns, runs: list[Planned], outcomes: dict[str, Outcome], say) -> int:
    """The sweep log, the report, the failures listed; the exit code."""
    failed = {k: o for k, o in outcomes.items() if o.status in ("failed", "interrupted")}
    log = write_log(ns, runs, outcomes)
    ran = sum(o.status == "complete" for o in outcomes.values())
    busy = [o for o in outcomes.values() if o.status == "busy"]
    complete_before = len(runs) - len(outcomes) + sum(o.status == "skipped" for o in outcomes.values())
    say(f"{PROG}: {len(runs)} runs: {complete_before} were already complete, {ran} ran, "
        f"{len(busy)} left to another process that runs them, {len(failed)} failed")
    if busy:
        print(f"{PROG}: {len(busy)} runs were being run by another process (e.g. {busy[0].error}); run this "
              "sweep again when it ends to include them in the report", file=sys.stderr)
    code = 0
    if not ns.no_report:
        complete = [Path(ns.results_dir) / r.run_id for r in runs if r.run_id not in failed]
        out = Path(ns.report_dir) if ns.report_dir else Path(ns.results_dir) / "report"
        from .plot import write_report  # pandas, seaborn: loaded only when a report is written

        try:
            files = write_report(complete, out)
        except BadInput as e:
            print(f"{PROG}: no report: {e}", file=sys.stderr)
            code = 1
        except OSError as e:  # a read-only or full --report-dir: the runs are done, the report is not
            print(f"{PROG}: no report: cannot write {e.filename or out}: {e.strerror or e}", file=sys.stderr)
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
    skipped = getattr(ns, "skipped", [])
    if skipped:  # what the study left out, and the one command that gets it
        again = os.environ.get("FORGETTING_RERUN_COMMAND") or " ".join([PROG, *ns.suites])
        names = ", ".join(f"{name!r} ({bench})" for name, bench in skipped)
        print(f"{PROG}: skipped {len(skipped)} experiment{'s' * (len(skipped) > 1)} whose data is missing: {names}; "
              f"to fetch their data and run them: {again} --download")
    if failed:
        print(f"{PROG}: {len(failed)} of {len(runs)} runs failed:", file=sys.stderr)
        labels = {r.run_id: describe(r.config) for r in runs}
        for rid, o in failed.items():
            print(f"  {rid} ({labels.get(rid, '')}): {o.error} [{Path(ns.results_dir) / rid}]", file=sys.stderr)
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
