"""Reading run directories for reports: checked, so that a bad file is named, never half-plotted.

Reads only ``config.json``, ``manifest.json`` and ``metrics.csv`` (results copied from another
machine work the same). Every problem is a :class:`BadInput` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from .config import LOOP_OPTIONS, PG_OPTIONS, flat_view

UNRECORDED_AT_DEFAULT = ("sft_targets", "base_preview", "learn_tasks", "finetune_lr", "stop_at_accuracy")
from .errors import BadInput
from .metrics import measured_only
from .results import CONFIG, MANIFEST, METRICS, find_runs, read_metrics_csv

KNOWN_SCHEMA_VERSIONS = (1, 2)  # 2: config.json in sections (stream, model, method, loop)
STATUSES = ("complete", "running", "failed", "interrupted")
PHASES = ("init", "step", "epoch")
REQUIRED_COLUMNS = ["run_id", "benchmark", "scenario", "method", "lambda", "seed", "phase", "trained_task",
                    "epoch", "global_step", "eval_task", "eval_task_name", "accuracy", "kl_base"]
INT_COLUMNS = ["seed", "trained_task", "epoch", "global_step", "eval_task"]
FLOAT_COLUMNS = ["lambda", "accuracy", "kl_base"]
# Config keys that say where or how a run was executed, not what it computed.
NOT_EXPERIMENT = ("seed", "data_dir", "results_dir", "device", "progress", "log_to", "schema_version")


@dataclass
class Run:
    """One run as read from its directory."""

    path: Path
    config: dict
    manifest: dict
    rows: pd.DataFrame
    # the config's unhashed settings (flattened names, e.g. model_options.lm_eval_at): execution settings and
    # options added later, at their default, which runs recorded before them do not have: never an experiment's
    settings: frozenset = frozenset()
    n_tasks: int = field(init=False)

    def __post_init__(self):
        self.n_tasks = int(self.rows.loc[~measured_only(self.rows), "eval_task"].nunique()) if len(self.rows) else 0

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.path.name)

    @property
    def status(self) -> str:
        return self.manifest["status"]

    @property
    def report_measures(self) -> str:
        """The summary columns the run's objective asks the reports' tables to show, as ``column:heading:scale``
        joined by ``;`` (from its manifest; empty for a run that predates them: the classifier's columns)."""
        return ";".join(f"{c}:{h}:{s:g}" for c, h, s in self.manifest.get("report_measures") or [])

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def tasks_completed(self) -> int:
        return int(self.manifest.get("completed_tasks") or 0)

    @property
    def benchmark(self) -> str:
        return str(self.config.get("benchmark") or self.rows["benchmark"].iloc[0])

    @property
    def scenario(self) -> str:
        return str(self.config.get("scenario") or self.rows["scenario"].iloc[0])

    @property
    def method(self) -> str:
        return str(self.config.get("method") or self.rows["method"].iloc[0])

    @property
    def lam(self) -> float:
        """The rows' ``lambda``; for a run with no rows yet, the method's strength option from its config."""
        if len(self.rows):
            return float(self.rows["lambda"].iloc[0])
        from .registry import known_method_classes

        classes = known_method_classes(self.method)  # never imports a module named in a results file
        if classes is None:  # a method this installation does not know
            return float("nan")
        opt = next((c.strength_option for c in classes if c.strength_option), None)
        try:
            return float(self.config.get("hparams", {})[opt]) if opt else 0.0
        except (KeyError, TypeError, ValueError):
            return float("nan")

    @property
    def reports_nll(self) -> bool:
        """Whether the run's objective reports a held-out NLL (its ``report_measures`` name one: a causal LM);
        for a run whose manifest predates ``report_measures``, whether its rows carry one."""
        measures = self.manifest.get("report_measures")
        if measures:
            return any("nll" in str(m[0]) for m in measures)
        from .metrics import has_nll

        return has_nll(self.rows)

    @property
    def nll_unit(self) -> str:
        """What the run's NLL is per: ``byte`` for ``--model gpt2`` (built with the byte-level tokenizer, a token
        per UTF-8 byte), ``token`` for another causal LM (a checkpoint's own tokenizer), '' for a run whose
        objective reports no NLL (a classifier)."""
        if not self.reports_nll:
            return ""
        return "byte" if str(self.config.get("model", "")) == "gpt2" else "token"

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def wall_time_s(self) -> float:
        w = self.manifest.get("wall_time_s")
        return float(w) if w is not None else float("nan")

    def state(self) -> str:
        """'complete', or e.g. 'failed after 2 of 5 tasks' (a killed run stays 'running')."""
        if self.complete:
            return "complete"
        if not len(self.rows):
            return f"{self.status}, nothing recorded yet"
        return f"{self.status} after {self.tasks_completed} of {self.n_tasks or '?'} tasks"

    def experiment(self) -> dict:
        """The flattened config without the seed and execution details: runs equal here are seeds of one experiment."""
        flat = flatten(self.config)
        # loop options a run records only away from their default (pg's for an sft run, options added later, the
        # token budget pg on a classifier drops): a run without one had the default, as a run that records it
        loop = "loop." if "method.name" in flat else "" if "method" in flat else None  # schema 2, 1, or no method
        if loop is not None:
            for o in LOOP_OPTIONS:
                if o.name in PG_OPTIONS or o.name in UNRECORDED_AT_DEFAULT:
                    flat.setdefault(loop + o.name, o.default)
        return {k: v for k, v in flat.items() if k.split(".")[0] not in NOT_EXPERIMENT and k not in self.settings}


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True) if isinstance(v, list) else v
    return out


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"{path}: missing (a run directory holds {CONFIG}, {MANIFEST} and {METRICS})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: corrupt JSON ({e})") from None
    if not isinstance(obj, dict):
        raise BadInput(f"{path}: corrupt, expected a JSON object, got {type(obj).__name__}")
    version = obj.get("schema_version")
    if version not in KNOWN_SCHEMA_VERSIONS:
        raise BadInput(f"{path}: unknown schema_version {version!r}, this version reads "
                       f"{', '.join(map(str, KNOWN_SCHEMA_VERSIONS))}")
    return obj


def _read_metrics(path: Path) -> pd.DataFrame:
    try:
        rows = read_metrics_csv(path)  # names as text, only empty cells missing
    except FileNotFoundError:
        raise BadInput(f"{path}: missing (a run directory holds {CONFIG}, {MANIFEST} and {METRICS})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"{path}: corrupt metrics file ({e})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise BadInput(f"{path}: corrupt metrics file, missing columns {', '.join(missing)}")
    for col in INT_COLUMNS + FLOAT_COLUMNS:
        num = pd.to_numeric(rows[col], errors="coerce")
        bad = num.isna() & rows[col].notna() if col == "kl_base" else num.isna()
        if col in INT_COLUMNS:
            bad |= num.notna() & (num != num.round())
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raw = rows[col].iloc[i]
            raise BadInput(f"{path}: corrupt metrics file, column {col} row {i + 2} "
                           f"{'is empty' if pd.isna(raw) else f'holds {str(raw)!r}'}, "
                           f"expected {'an integer' if col in INT_COLUMNS else 'a number'}")
        rows[col] = num.astype(int) if col in INT_COLUMNS else num.astype(float)
    bad_acc = ~rows["accuracy"].between(0, 1)
    if bad_acc.any():
        i = int(bad_acc.to_numpy().nonzero()[0][0])
        raise BadInput(f"{path}: corrupt metrics file, accuracy {rows['accuracy'].iloc[i]!r} on row {i + 2} "
                       "is outside [0, 1]")
    bad_phase = ~rows["phase"].isin(PHASES)
    if bad_phase.any():
        i = int(bad_phase.to_numpy().nonzero()[0][0])
        raise BadInput(f"{path}: corrupt metrics file, phase {rows['phase'].iloc[i]!r} on row {i + 2}, "
                       f"allowed: {', '.join(PHASES)}")
    if rows["run_id"].nunique() > 1:
        raise BadInput(f"{path}: corrupt metrics file, rows of {rows['run_id'].nunique()} runs in one file")
    return rows


def read_checked(run_dir: Path) -> Run:
    """One run directory, checked; BadInput naming the file at the first problem."""
    manifest = _read_json(run_dir / MANIFEST)
    if manifest.get("status") not in STATUSES:
        raise BadInput(f"{run_dir / MANIFEST}: unknown status {manifest.get('status')!r}, "
                       f"allowed: {', '.join(STATUSES)}")
    raw = _read_json(run_dir / CONFIG)
    config = flat_view(raw)  # the same flat fields for every schema version
    settings = frozenset(f"{flat}.{k}" for part, flat in (("method", "hparams"), ("model", "model_options"),
                                                          ("stream", "stream_options"))
                         if isinstance(raw.get(part), dict) for k in raw[part].get("settings") or {})
    run = Run(run_dir, config, manifest, _read_metrics(run_dir / METRICS), settings)
    trained = set(run.rows.loc[run.rows["phase"] == "epoch", "trained_task"])
    if run.complete and (not run.n_tasks or trained != set(range(run.n_tasks))):
        raise BadInput(f"{run_dir / METRICS}: corrupt metrics file, the manifest says complete but the rows "
                       f"end after {len(trained)} of {run.n_tasks} tasks")
    return run


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run at or below ``paths``; BadInput for a path without runs or any bad file.

    A run found twice (the same run id under two paths) is read once, the complete copy first.
    """
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise BadInput(f"{p}: no such file or directory")
        dirs = find_runs([p])
        if not dirs:
            raise BadInput(f"{p}: no runs found (no {MANIFEST} at or below it)")
        found.extend(d for d in dirs if d.resolve() not in {f.resolve() for f in found})
    runs = [read_checked(d) for d in found]
    by_id: dict[str, Run] = {}
    for r in sorted(runs, key=lambda r: not r.complete):
        by_id.setdefault(r.run_id, r)
    return sorted(by_id.values(), key=lambda r: (r.benchmark, r.scenario, r.method, r.lam, r.seed, r.run_id))


# --- one row per run with its whole config (runs.csv) ---------------------------------------
LOOP_FIELDS = ("epochs", "batch_size", "lr", "seed", "eval_every", "eval_batch_size", "eval_subset")
SECTIONS = (("method", "hparams"), ("model", "model_options"), ("stream", "stream_options"))


def config_columns(cfg: dict) -> dict:
    """A run's flat config as columns: top-level fields by name (``epochs``, ``device``, ...) and each
    component's option as ``method.kl_lambda``, ``model.hidden``, ``stream.n_tasks`` (lists as JSON text)."""
    def cell(v):
        return json.dumps(v) if isinstance(v, (list, tuple)) else v

    out = {k: cell(v) for k, v in cfg.items() if not isinstance(v, dict) and k != "schema_version"}
    for section, key in SECTIONS:
        out.update({f"{section}.{k}": cell(v) for k, v in sorted((cfg.get(key) or {}).items())})
    return out


def _flag(name: str, value) -> list[str]:
    import shlex

    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + name.replace("_", "-")]
    if isinstance(value, (list, tuple)):
        return [flag, *(shlex.quote(str(v)) for v in value)]
    return [flag, shlex.quote(repr(value) if isinstance(value, float) else str(value))]  # repr: exact


def run_command(cfg: dict) -> str:
    """The ``python -m forgetting.run`` command line that computes this run again (the same run id):
    its components and every option it recorded; where it ran (device, paths) is left to the reader."""
    parts = ["python", "-m", "forgetting.run"]
    for flag, key in (("benchmark", "benchmark"), ("scenario", "scenario"), ("model", "model"), ("method", "method")):
        if cfg.get(key) is not None:
            parts += _flag(flag, cfg[key])
    for _, key in reversed(SECTIONS):
        for k, v in sorted((cfg.get(key) or {}).items()):
            parts += _flag(k, v)
    for k in LOOP_FIELDS:
        if cfg.get(k) is not None:
            parts += _flag(k, cfg[k])
    return " ".join(parts)


def runs_config_table(runs: list[Run]) -> pd.DataFrame:
    """Per run id: every config field as a column and the command that computes the run again."""
    return pd.DataFrame([{"run_id": r.run_id, **config_columns(r.config), "command": run_command(r.config)}
                         for r in runs])
