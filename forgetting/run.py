"""``python -m forgetting.run``: one experiment, base task then fine-tuning, ending in a forgetting table."""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import registry
from .config import DEVICES, LOOP_OPTIONS, RunConfig
from .errors import EXIT_BAD_INPUT, BadInput, OneLineParser, RunFailed, WriteFailed, command_name
from .options import Option
from .checkpoint import CHECKPOINTS, clear_checkpoints, restore_last_readable, save_boundary
from .claim import RunBusy, check_free, claim
from .results import MANIFEST, METRIC_COLUMNS, RunWriter, read_run
from .tracking import TRACKERS

log = logging.getLogger("forgetting")


def _add_option(group, o: Option) -> None:
    default = ("on" if o.default else "off") if o.type is bool else o.default
    text = f"{o.help} (default: {default})".replace("%", "%%")
    kwargs = dict(dest=o.name, default=argparse.SUPPRESS, help=text)
    if o.nargs:
        kwargs["nargs"] = o.nargs
    if o.type is bool:  # --teacher-cache / --no-teacher-cache, like --force
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = str  # checked by Option.check for one message format everywhere
        kwargs["metavar"] = "{" + ",".join(map(str, o.choices)) + "}" if o.choices else o.type.__name__.upper()
    group.add_argument(o.flag, **kwargs)


TOP_LEVEL = {"benchmark": "split-digits", "model": "mlp", "method": "kl", "device": "auto",
             "results_dir": "results", "data_dir": None}


def _preparse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The component names (and --config) alone, so a user's own components (``--method mypkg.mymethod``)
    can add their flags before the whole command line is parsed."""
    p = argparse.ArgumentParser(add_help=False)
    for flag in ("--benchmark", "--model", "--method", "--config"):
        p.add_argument(flag, default=None)
    return p.parse_known_args(argv)[0]


def read_config_file(path: str) -> dict:
    """A run's options from a TOML file: top-level keys ``benchmark``, ``model``, ``method``, ``device``,
    ``data_dir``, ``results_dir`` and any option by its config name (``kl_lambda = 0.5``)."""
    import tomllib

    try:
        values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise BadInput(f"--config: cannot read {path!r}: {e.strerror or e}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BadInput(f"--config: {path!r} is not valid TOML: {e}") from None
    for key, value in values.items():
        if isinstance(value, dict):
            raise BadInput(f"--config {path}: {key!r} is a table; write options as top-level keys, e.g. kl_lambda = 0.5")
    return values


def build_parser(chosen: argparse.Namespace | None = None) -> argparse.ArgumentParser:
    """The CLI: one group per component, every option any registered component declares (each checked
    and sorted to its component by ``registry.gather``/``resolve``, not here)."""
    p = OneLineParser(
        prog=command_name("run"),
        description="Train a base model on the first task of a stream, fine-tune it on the others with a "
                    "method that holds forgetting back (by default the KL penalty towards a frozen copy), "
                    "evaluate every task after every epoch, and write the results to RESULTS_DIR/<run id>/.",
    )
    if chosen is not None:  # load a user's components named on the command line, so their options are declared
        for lookup, name in ((registry.stream, chosen.benchmark), (registry.model, chosen.model),
                             (registry.method_classes, chosen.method)):
            try:
                lookup(name)
            except BadInput:
                pass  # reported with the other values by resolve
    declared: set[str] = set()

    def add(group, options):
        for o in options:
            if o.name not in declared:
                declared.add(o.name)
                _add_option(group, o)

    p.add_argument("--version", action="version", version=f"forgetting {_version()}")
    p.add_argument("--config", metavar="FILE", default=None, help="read the run's options from a TOML file "
                   "(top-level keys: benchmark, model, method and any option by its config name, e.g. "
                   "kl_lambda = 0.5); flags given on the command line win")
    g = p.add_argument_group("stream (what to learn)")
    g.add_argument("--benchmark", default=None, help=f"task stream: {', '.join(registry.names('stream'))} "
                   "(default: split-digits, bundled with scikit-learn, no download)")
    g.add_argument("--data-dir", default=None, help="directory of local data sets (default: $FORGETTING_DATA_DIR, "
                   "else ../shared/data when it exists)")
    add(g, registry.all_options("stream"))
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help=f"model: {', '.join(registry.names('model'))}; kind:SOURCE loads "
                   "a checkpoint, e.g. bert:PATH (default: mlp)")
    add(g, registry.all_options("model"))
    g = p.add_argument_group("method")
    g.add_argument("--method", default=None, help=f"how fine-tuning is held back: {', '.join(registry.names('method'))}; "
                   "compose with '+', e.g. kl+rdrop; or a module of your own, e.g. mypkg.mymethod (default: kl)")
    add(g, registry.all_options("method"))
    g = p.add_argument_group("loop")
    add(g, LOOP_OPTIONS)
    g.add_argument("--device", default=None, help=f"{', '.join(DEVICES)} (cuda when available) or cuda:N (default: auto)")
    g = p.add_argument_group("output")
    g.add_argument("--results-dir", default=None, help="where run directories go (default: results)")
    g.add_argument("--force", action="store_true", help="run again even if a complete run with this config exists")
    g.add_argument("--resume", action="store_true", help="continue an unfinished run with this config from its last "
                   "finished task (checkpoints are saved at every task boundary)")
    g.add_argument("--quiet", action="store_true", help="no progress bars and no final table")
    g.add_argument("--log-to", action="append", default=None, metavar="{" + ",".join(TRACKERS) + "}",
                   help="also stream the config, every evaluation and the training losses to an experiment "
                        "tracker (repeatable; never changes the run id): tensorboard (RUN_DIR/tensorboard), "
                        "mlflow ($MLFLOW_TRACKING_URI, else sqlite:///RESULTS_DIR/mlflow.db), wandb (offline "
                        "under RUN_DIR/wandb unless $WANDB_MODE says otherwise); needs the [track] extra")
    return p


NOT_OPTIONS = (*TOP_LEVEL, "force", "resume", "quiet", "config", "log_to")


def _version() -> str:
    from . import __version__

    return __version__


def config_from_args(ns: argparse.Namespace) -> RunConfig:
    """The run's resolved config from the parsed command line (over ``--config FILE``, over the defaults);
    BadInput on the first bad value."""
    from_file = read_config_file(ns.config) if getattr(ns, "config", None) else {}
    top = {k: (getattr(ns, k, None) if getattr(ns, k, None) is not None else from_file.get(k, default))
           for k, default in TOP_LEVEL.items()}
    given = {**{k: v for k, v in from_file.items() if k not in TOP_LEVEL},
             **{k: v for k, v in vars(ns).items() if k not in NOT_OPTIONS}}
    for key in ("benchmark", "model", "method", "device", "results_dir"):
        if not isinstance(top[key], str):
            raise BadInput(f"--{key.replace('_', '-')}: bad value {top[key]!r}, allowed: a string")
    log_to = getattr(ns, "log_to", None) or from_file.get("log_to", [])
    log_to = [log_to] if isinstance(log_to, str) else log_to
    config = registry.gather(top["benchmark"], top["model"], top["method"],
                             {k: v for k, v in given.items() if k != "log_to"}, device=top["device"],
                             data_dir=top["data_dir"], results_dir=top["results_dir"], progress=not ns.quiet,
                             log_to=log_to)
    return registry.resolve(config)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device: 'cuda' requested but no CUDA device is available, allowed here: cpu, auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without importing TorchInductor.

    The torch function also sets ``torch._inductor.config.deterministic``, and importing that module
    imports TorchInductor's compiler modules (0.26 s of a default run's start; TorchDynamo itself comes
    with the first ``torch.optim`` optimiser anyway). The harness never compiles, so it sets the flag
    only where Inductor is already loaded; a later import of Inductor (a user's ``torch.compile``)
    reads its own default.
    """
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


def determinism_settings(device: torch.device) -> dict:
    """Ask torch for deterministic kernels (warning where one has none) and say what was set."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deterministic_algorithms()
    torch.backends.cudnn.benchmark = False
    return {
        "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "torch_num_threads": torch.get_num_threads(),
    }


def warn_one_class_tasks(stream) -> list[str]:
    """In ``task`` a task with one class gets a one-output head: nothing to learn, accuracy 100%. Say so.
    In ``class`` and ``domain`` a stream where no task holds two classes, or a task that trains a single
    output, learns nothing either: BadInput."""
    if stream.scenario != "task":
        check_two_classes(stream)
        return []
    lonely = [task.name for task, outs in zip(stream.tasks, stream.layout.task_outputs) if len(outs) < 2]
    for name in lonely:
        log.warning("task %r has one class: with --scenario task its head has one output, so its loss is 0 and its "
                    "accuracy 100%% whatever the model does (give it two classes, or use --scenario domain or class)",
                    name)
    return lonely


def check_two_classes(stream) -> None:
    """BadInput for a ``class``/``domain`` stream in which nothing is learned (see warn_one_class_tasks)."""
    if getattr(stream, "objective", "classification") != "classification":
        return  # a language-modelling stream has no classes
    layout = stream.layout
    for t, task in enumerate(stream.tasks):
        active = layout.active_outputs(t)
        if (layout.n_outputs if active is None else len(active)) < 2:
            raise BadInput(f"--scenario {stream.scenario}: task {task.name!r} trains a classifier with one output, "
                           "which is right whatever the model does; allowed: a first task with two classes or more")
    found = [(getattr(task.train, "targets", None), getattr(task.test, "targets", None)) for task in stream.tasks]
    if (all(isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) for a, b in found)
            and all(int(torch.cat([a, b]).unique().numel()) < 2 for a, b in found)):
        raise BadInput(f"--scenario {stream.scenario}: every task holds one class ({', '.join(t.name for t in stream.tasks)}),"
                       " so no task asks the model to tell classes apart; allowed: tasks with two classes or more")


def build_stream_for(config: RunConfig):
    """The run's stream; a text stream is encoded with the tokenizer the run's model brings."""
    from .streams import build_stream

    extra = {"data_dir": config.data_dir, "tokenizer": registry.tokenizer_maker(config.model.name, config.model.values())}
    return build_stream(registry.stream(config.benchmark), config.scenario, {**config.stream_options, **extra})


def prepare(config: RunConfig):
    """Everything a run needs, built and checked before any file is written.

    Data flows one way: the model's tokenizer maker (text models) goes to the stream, which
    encodes its texts with it; the model is then built for the stream's layout.
    """
    from .models import split_spec

    device = resolve_device(config.device)
    spec = registry.model(config.model.name)
    if spec.check_device is not None:
        spec.check_device(config.model.values(), device)
    _, source = split_spec(config.model.name)
    model_values = config.model.values()
    stream = build_stream_for(config)
    stream.objective = registry.objective_of(config.benchmark, config.model.name).name  # chosen by resolve
    warn_one_class_tasks(stream)
    methods = registry.build_methods(config.method.name, config.hparams)
    for m in methods:  # options that cannot work on this stream
        m.check_stream(stream)
    seed_everything(config.seed)
    try:
        model = spec.build(stream, model_values, source)
    except (ValueError, OSError) as e:
        if isinstance(e, BadInput):
            raise
        raise BadInput(f"--model {config.model.name}: {e}") from None
    return device, stream, model, methods


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
        self.writer.flush_rows()  # a checkpoint of task t implies its rows are on disk (resume keeps them)
        self.writer.write(self.writer.dir / CHECKPOINTS,
                          lambda _: save_boundary(self.writer.dir, trainer, task, self.writer.elapsed()))
        self.writer.task_done(trainer, task)


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
        writer.update(**fields)
        writer.finish(status, error)
    except WriteFailed:
        pass


def run_experiment(config: RunConfig, force: bool = False, resume: bool = False):
    """Run one experiment; returns (run directory, metric rows as a DataFrame, status).

    A complete run with the same config is not run again (status ``skipped``) unless ``force``.
    With ``resume``, an unfinished one continues from its last task-boundary checkpoint that
    reads and ends with the same rows as an uninterrupted run; otherwise it starts again from
    scratch. The run is claimed first (``forgetting.claim``): RunBusy when another live process
    runs it. The manifest says ``complete`` only when every task's rows are there.
    """
    if force and resume:
        raise BadInput("--resume and --force together: pick one (--resume continues an unfinished run from its last "
                       "checkpoint, --force runs it again from the start)")
    config = registry.resolve(config)
    ensure_writable(config.results_dir)
    run_dir = Path(config.results_dir) / config.run_id
    if not force:  # a complete run is final: no claim needed to see it
        old_rows, previous = _previous(run_dir)
        if previous is not None and previous.get("status") == "complete":
            return run_dir, old_rows, "skipped"
    check_free(run_dir)  # another process runs it: say so before preparing (a stream can take minutes)
    device, stream, model, methods = prepare(config)  # checks everything before a file is written
    extra = {"determinism": determinism_settings(device), "data": config.data_fingerprint, **ray_node()}
    writer = RunWriter(config, str(device), extra_manifest=extra)
    trainer_cls = registry.runner(config.method.name)  # our Trainer, or Avalanche's loop (imported only then)
    trainer = trainer_cls(config, stream, model, methods, device, recorder=Recorder(writer))  # may refuse: BadInput
    with claim(run_dir):
        old_rows, previous = _previous(run_dir)  # again, under the claim: another process may have run it
        if not force and previous is not None and previous.get("status") == "complete":
            return run_dir, old_rows, "skipped"
        return _run_claimed(config, run_dir, stream, writer, trainer, old_rows, previous, resume)


def _run_claimed(config, run_dir, stream, writer, trainer, old_rows, previous, resume):
    last, elapsed = None, 0.0
    if resume and previous is not None and old_rows is not None:
        last, elapsed, unreadable = restore_last_readable(run_dir, trainer)
        if unreadable:
            then = f"resuming from the end of task {last}" if last is not None else "starting again from the first task"
            log.warning("--resume: cannot read checkpoint %s; %s", "; nor ".join(unreadable), then)
    try:
        if last is not None:
            kept = old_rows[(old_rows["phase"] == "init") | (old_rows["trained_task"] <= last)]
            writer.manifest["started"] = previous.get("started", writer.manifest["started"])
            writer.manifest["resumed_at"] = list(previous.get("resumed_at", []))
            writer.resume_from(kept.to_dict("records"), elapsed, last)
        else:
            clear_checkpoints(run_dir)
        writer.open()
        trainer.fit(start_task=0 if last is None else last + 1)
        missing = writer.missing_tasks(len(stream), config.epochs)
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
    import pandas as pd  # imported when a run has rows to return, not for --help

    return run_dir, pd.DataFrame(writer.rows, columns=METRIC_COLUMNS), "complete"


def format_report(rows, run_dir: Path) -> str:
    from .metrics import accuracy_matrix, run_summary

    A = accuracy_matrix(rows)
    s = run_summary(rows)
    names = rows.drop_duplicates("eval_task").sort_values("eval_task")["eval_task_name"].tolist()
    lines = [f"results: {run_dir}", "", "accuracy (%) after each task (rows: trained task, columns: evaluated task):"]
    width = max(8, max(len(n) for n in names) + 1)
    lines.append(" " * width + "".join(f"{k:>8}" for k in range(A.shape[1])))
    for t in range(A.shape[0]):
        lines.append(f"{names[t]:<{width}}" + "".join(f"{100 * a:8.1f}" for a in A[t]))
    lines.append("")
    fm = s.get("forgetting_max", float("nan"))
    lines.append(f"average accuracy over the {s['tasks_trained']} tasks seen: {100 * s['average_accuracy']:.1f}%")
    if not math.isnan(fm):
        lines.append(f"average forgetting (max-based, Chaudhry et al. 2018): {100 * fm:.1f} points; "
                     f"backward transfer: {100 * s['bwt']:+.1f} points")
    return "\n".join(lines)


class _TqdmHandler(logging.Handler):
    """Log lines that do not break the progress bars."""

    def emit(self, record):
        from tqdm import tqdm  # the terminal's bars (progress.bar)

        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("forgetting")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("[forgetting] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    chosen = _preparse(argv)
    try:
        from_file = read_config_file(chosen.config) if chosen.config else {}
    except BadInput as e:
        print(f"{command_name('run')}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for key in ("benchmark", "model", "method"):  # a user's component named in the file declares its flags too
        if getattr(chosen, key) is None:
            setattr(chosen, key, from_file.get(key, TOP_LEVEL[key]))
    parser = build_parser(chosen)
    ns = parser.parse_args(argv)
    setup_logging(ns.quiet)
    config = None
    try:
        config = config_from_args(ns)
        run_dir, rows, status = run_experiment(config, force=ns.force, resume=ns.resume)
    except BadInput as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailed as e:
        print(f"{parser.prog}: run failed: {e} (rows so far kept in {Path(config.results_dir) / config.run_id})",
              file=sys.stderr)
        return 1
    except RunBusy as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; the run is marked unfinished", file=sys.stderr)
        return 130
    if status == "skipped" and not ns.quiet:
        print(f"run {config.run_id} is already complete (use --force to run it again)")
    if not ns.quiet:
        print(format_report(rows, run_dir))
    return 0


def experiment(benchmark: str = "split-digits", method: str = "kl", *, force: bool = False, resume: bool = False,
               results_dir: str | Path = "results", progress: bool = False, **options) -> "pd.DataFrame":
    """Run one experiment and return its tidy metric rows (one per evaluation point and task).

    ``options`` are any option of the chosen stream, model, method or loop, by their config names
    (``scenario="class"``, ``model="bert"``, ``kl_lambda=0.5``, ``epochs=2``, ``data_dir=...``). An
    option the components do not take raises ``BadInput`` naming it. The run's directory is in
    ``df.attrs["run_dir"]`` and its status (``complete`` or ``skipped``) in ``df.attrs["status"]``.
    """
    config = registry.make_config(benchmark=benchmark, method=method, results_dir=str(results_dir),
                                  progress=progress, **options)
    run_dir, rows, status = run_experiment(config, force=force, resume=resume)
    rows = rows.copy()
    rows.attrs.update(run_dir=str(run_dir), status=status, run_id=config.run_id)
    return rows


class _CallableModule(type(sys)):
    """``forgetting.run`` is this module (``python -m forgetting.run``) and, called, the notebook API."""

    def __call__(self, benchmark: str = "split-digits", method: str = "kl", **options):
        return experiment(benchmark, method, **options)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
