"""The command line of ``python -m forgetting.run``: flags from the components' options, ``--config FILE``,
logging, the final report of one run, and ``main``. Preparing a run is ``preparing``, running it
``running``; the notebook API is ``api``."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from . import registry
from .claim import RunBusy
from .config import DEVICES, LOOP_OPTIONS, RunConfig
from .errors import EXIT_BAD_INPUT, BadInput, OneLineParser, RunFailed, command_name
from .gc_freeze import freeze_after_imports
from .options import Option
from .running import run_experiment
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
             "results_dir": None, "data_dir": None}  # results_dir None: results/<the run's budget> (budget.py)


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
    g.add_argument("--results-dir", default=None, help="where run directories go (default: results/<the run's "
                   "budget>, e.g. results/epochs=5,batch_size=32: runs of different budgets never share a folder "
                   "by accident)")
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


def gather_from_args(ns: argparse.Namespace) -> RunConfig:
    """The run's config from the parsed command line (over ``--config FILE``, over the defaults), each value
    given to the component that declares it (``registry.gather``), not resolved yet; BadInput on a value
    no component takes."""
    from_file = read_config_file(ns.config) if getattr(ns, "config", None) else {}
    top = {k: (getattr(ns, k, None) if getattr(ns, k, None) is not None else from_file.get(k, default))
           for k, default in TOP_LEVEL.items()}
    given = {**{k: v for k, v in from_file.items() if k not in TOP_LEVEL},
             **{k: v for k, v in vars(ns).items() if k not in NOT_OPTIONS}}
    for key in ("benchmark", "model", "method", "device", "results_dir"):
        if not isinstance(top[key], str) and not (key == "results_dir" and top[key] is None):
            raise BadInput(f"--{key.replace('_', '-')}: bad value {top[key]!r}, allowed: a string")
    log_to = getattr(ns, "log_to", None) or from_file.get("log_to", [])
    log_to = [log_to] if isinstance(log_to, str) else log_to
    return registry.gather(top["benchmark"], top["model"], top["method"],
                           {k: v for k, v in given.items() if k != "log_to"}, device=top["device"],
                           data_dir=top["data_dir"], results_dir=top["results_dir"], progress=not ns.quiet,
                           log_to=log_to)


def config_from_args(ns: argparse.Namespace) -> RunConfig:
    """The run's resolved config from the parsed command line; BadInput on the first bad value."""
    return registry.resolve(gather_from_args(ns))


def format_report(rows, run_dir: Path, measures=None) -> str:
    """The end-of-run report: the matrix of the run's headline measure after each task, then its summary.

    ``measures``: the run's objective's ``report_measures`` (None: a classifier's, accuracy). For a causal LM
    the matrix is the held-out NLL per token and the summary its rise and the answer accuracy."""
    from .metrics import accuracy_matrix, run_summary

    s = run_summary(rows)
    names = rows.drop_duplicates("eval_task").sort_values("eval_task")["eval_task_name"].tolist()
    width = max(8, max(len(n) for n in names) + 1)
    nll = measures is not None and any(m[0].endswith("_nll") for m in measures)
    A = accuracy_matrix(rows, value="nll" if nll else "accuracy")
    title = "held-out NLL per token (nats)" if nll else "accuracy (%)"
    lines = [f"results: {run_dir}", "", f"{title} after each task (rows: trained task, columns: evaluated task):"]
    lines.append(" " * width + "".join(f"{k:>8}" for k in range(A.shape[1])))
    for t in range(A.shape[0]):
        lines.append(f"{names[t]:<{width}}" + "".join(f"{a:8.3f}" if nll else f"{100 * a:8.1f}" for a in A[t]))
    lines.append("")
    if nll:
        for column, heading, scale in measures:
            value = s.get(column, float("nan"))
            if not math.isnan(value):
                lines.append(f"{heading}: {scale * value:.1f}%" if scale == 100 else f"{heading}: {value:.3f} nats")
        return "\n".join(lines)
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
    if argv is None:  # the command's own process (console script, python -m): see gc_freeze
        freeze_after_imports()
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
    follower = os.environ.get("RANK", "0") != "0"  # a rank other than 0 of a launched run: rank 0 reports
    setup_logging(ns.quiet or follower)
    config = None
    try:
        config = registry.resolve(gather_from_args(ns))  # the run's one resolve
        run_dir, rows, status = run_experiment(config, force=ns.force, resume=ns.resume, resolved=True)
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
    if rows is None or follower:
        return 0
    if status == "skipped" and not ns.quiet:
        print(f"run {config.run_id} is already complete (use --force to run it again)")
    if not ns.quiet:
        measures = registry.objective_of(config.benchmark, config.model.name).report_measures
        print(format_report(rows, run_dir, measures))
    return 0


