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
import pandas as pd
import torch

from . import methods as methods_mod
from . import models as models_mod
from . import streams as streams_mod
from .config import CORE_OPTIONS, RunConfig
from .errors import EXIT_BAD_INPUT, BadInput, OneLineParser, RunFailed
from .metrics import accuracy_matrix, run_summary
from .options import Option, check_all
from .checkpoint import last_boundary, restore_boundary
from .results import MANIFEST, METRIC_COLUMNS, RunWriter, read_run
from .train import Trainer

DEVICES = ("auto", "cpu", "cuda")


def _add_option(group, o: Option) -> None:
    kwargs = dict(dest=o.name, default=argparse.SUPPRESS, help=f"{o.help} (default: {o.default})")
    if o.nargs:
        kwargs["nargs"] = o.nargs
    if o.type is bool:
        kwargs["type"] = str
        kwargs["metavar"] = "{true,false}"
    else:
        kwargs["type"] = str  # checked by Option.check for one message format everywhere
        kwargs["metavar"] = "{" + ",".join(map(str, o.choices)) + "}" if o.choices else o.type.__name__.upper()
    group.add_argument(o.flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m forgetting.run",
        description="Train a base model on the first task of a stream, fine-tune it on the others with a "
                    "method that holds forgetting back (by default the KL penalty towards a frozen copy), "
                    "evaluate every task after every epoch, and write the results to RESULTS_DIR/<run id>/.",
    )
    g = p.add_argument_group("what to learn")
    g.add_argument("--benchmark", default="split-digits", help=f"task stream: {', '.join(streams_mod.BENCHMARKS)} "
                   "(default: split-digits, bundled with scikit-learn, no download)")
    g.add_argument("--scenario", default="domain", help="task (a head per task, task id given), domain (one shared "
                   "head), class (one head over all classes) (default: domain)")
    g.add_argument("--data-dir", default=None, help="directory of local data sets (default: $FORGETTING_DATA_DIR, "
                   "else ../shared/data when it exists)")
    for o in streams_mod.OPTIONS:
        _add_option(g, o)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="mlp", help=f"model: {', '.join(models_mod.MODELS)} (default: mlp)")
    for name in models_mod.MODELS:
        for o in models_mod.model_module(name).OPTIONS:
            _add_option(g, o)
    g = p.add_argument_group("method")
    g.add_argument("--method", default="kl", help=f"how fine-tuning is held back: {', '.join(methods_mod.METHODS)}; "
                   "compose with '+', e.g. kl+rdrop (default: kl)")
    for o in methods_mod.all_options():
        _add_option(g, o)
    g = p.add_argument_group("training")
    for o in CORE_OPTIONS:
        _add_option(g, o)
    g.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available) (default: auto)")
    g = p.add_argument_group("output")
    g.add_argument("--results-dir", default="results", help="where run directories go (default: results)")
    g.add_argument("--force", action="store_true", help="run again even if a complete run with this config exists")
    g.add_argument("--resume", action="store_true", help="continue an unfinished run with this config from its last "
                   "finished task (checkpoints are saved at every task boundary)")
    g.add_argument("--quiet", action="store_true", help="no progress bars and no final table")
    return p


def _pick(options: Sequence[Option], given: dict) -> dict:
    return check_all(options, {o.name: given[o.name] for o in options if o.name in given})


def config_from_args(ns: argparse.Namespace) -> RunConfig:
    """Check every value and build the run's config; BadInput on the first bad one."""
    given = vars(ns)
    if ns.benchmark not in streams_mod.BENCHMARKS:
        raise BadInput(f"--benchmark: unknown benchmark {ns.benchmark!r}, allowed: {', '.join(streams_mod.BENCHMARKS)}")
    if ns.scenario not in streams_mod.SCENARIOS:
        raise BadInput(f"--scenario: unknown scenario {ns.scenario!r}, allowed: {', '.join(streams_mod.SCENARIOS)}")
    if ns.device not in DEVICES:
        raise BadInput(f"--device: unknown device {ns.device!r}, allowed: {', '.join(DEVICES)}")
    method_opts = methods_mod.method_options(ns.method)
    own = {o.name for o in method_opts}
    for o in methods_mod.all_options():
        if o.name in given and o.name not in own:
            raise BadInput(f"{o.flag} does not apply to method {ns.method!r} (its options: "
                           f"{', '.join(x.flag for x in method_opts) or 'none'})")
    model_mod = models_mod.model_module(ns.model)
    model_own = {o.name for o in model_mod.OPTIONS}
    for name in models_mod.MODELS:
        for o in models_mod.model_module(name).OPTIONS:
            if o.name in given and o.name not in model_own:
                raise BadInput(f"{o.flag} does not apply to model {ns.model!r}")
    hparams = _pick(method_opts, given)
    model_options = _pick(model_mod.OPTIONS, given)
    stream_options = _pick(streams_mod.OPTIONS, given)
    core = _pick(CORE_OPTIONS, given)
    data_dir = ns.data_dir if ns.data_dir is not None else streams_mod.default_data_dir()
    if ns.data_dir is not None and not Path(ns.data_dir).is_dir() and not stream_options.get("download"):
        raise BadInput(f"--data-dir: {ns.data_dir!r} is not a directory")
    return RunConfig(
        benchmark=ns.benchmark, scenario=ns.scenario, model=ns.model, method=ns.method, hparams=hparams,
        model_options=model_options, stream_options=stream_options, device=ns.device, data_dir=data_dir,
        results_dir=ns.results_dir, progress=not ns.quiet, **core,
    )


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


def determinism_settings(device: torch.device) -> dict:
    """Ask torch for deterministic kernels (warning where one has none) and say what was set."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    return {
        "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "torch_num_threads": torch.get_num_threads(),
    }


def prepare(config: RunConfig):
    """Everything a run needs, built and checked before any file is written."""
    device = resolve_device(config.device)
    stream = streams_mod.build_stream(config.benchmark, config.scenario,
                                      {**config.stream_options, "data_dir": config.data_dir, "model": config.model})
    methods = methods_mod.build_methods(config.method, config.hparams)
    for m in methods:
        m.check_stream(stream)
    seed_everything(config.seed)
    try:
        model = models_mod.build_model(config.model, stream, config.model_options)
    except (ValueError, OSError) as e:
        if isinstance(e, BadInput):
            raise
        raise BadInput(f"--model {config.model}: {e}") from None
    return device, stream, model, methods


def ensure_writable(results_dir: str) -> None:
    probe = Path(results_dir)
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise BadInput(f"--results-dir: {results_dir!r} is inside a file ({probe}), not a directory")
    if not os.access(probe, os.W_OK):
        raise BadInput(f"--results-dir: {results_dir!r} cannot be written")


def run_experiment(config: RunConfig, force: bool = False, resume: bool = False):
    """Run one experiment; returns (run directory, metric rows as a DataFrame, status).

    A complete run with the same config is not run again (status ``skipped``) unless ``force``.
    With ``resume``, an unfinished one continues from its last task-boundary checkpoint and
    ends with the same rows as an uninterrupted run; otherwise it starts again from scratch.
    """
    config = config.resolved()
    ensure_writable(config.results_dir)
    run_dir = Path(config.results_dir) / config.run_id
    previous = None
    if not force and (run_dir / MANIFEST).is_file():
        try:
            _, old_rows, previous = read_run(run_dir)
        except (OSError, ValueError):
            previous = None  # unreadable leftovers: start again
        if previous is not None and previous.get("status") == "complete":
            return run_dir, old_rows, "skipped"
    device, stream, model, methods = prepare(config)
    settings = determinism_settings(device)
    trainer_start = 0
    writer = RunWriter(config, str(device), extra_manifest={"determinism": settings})
    trainer_cls = Trainer
    if config.method.startswith("avalanche-"):  # Avalanche runs the loop; imported only here (slow import)
        from .integrations.avalanche import AvalancheTrainer as trainer_cls
    trainer = trainer_cls(config, stream, model, methods, device, recorder=writer)
    last = last_boundary(run_dir) if (resume and previous is not None) else None
    if last is not None:
        elapsed = restore_boundary(run_dir, trainer, last)
        kept = old_rows[(old_rows["phase"] == "init") | (old_rows["trained_task"] <= last)]
        writer.manifest["started"] = previous.get("started", writer.manifest["started"])
        writer.manifest["resumed_at"] = list(previous.get("resumed_at", []))
        writer.resume_from(kept.to_dict("records"), elapsed, last)
        writer.open(fresh=False)
        trainer_start = last + 1
    else:
        writer.open(fresh=True)
    try:
        trainer.fit(start_task=trainer_start)
    except RunFailed as e:
        writer.update(failed_at=e.where)
        writer.finish("failed", str(e))
        raise
    except KeyboardInterrupt:
        writer.finish("interrupted", "interrupted by the user")
        raise
    except BaseException as e:
        writer.finish("failed", f"{type(e).__name__}: {e}")
        raise
    writer.finish("complete")
    return run_dir, pd.DataFrame(writer.rows, columns=METRIC_COLUMNS), "complete"


def format_report(rows, run_dir: Path) -> str:
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
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("forgetting")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("[forgetting] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    setup_logging(ns.quiet)
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
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; the run is marked unfinished", file=sys.stderr)
        return 130
    if status == "skipped" and not ns.quiet:
        print(f"run {config.run_id} is already complete (use --force to run it again)")
    if not ns.quiet:
        print(format_report(rows, run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
