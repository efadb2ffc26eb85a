"""The run directory: ``config.json``, ``metrics.csv`` (tidy rows), ``manifest.json``.

Every file is written whole to a temporary name and renamed into place, so a run killed at any
moment leaves either the previous complete version or the new one, never half a file. The
manifest's ``status`` says whether the rows are complete: ``running`` (or a killed run),
``failed``, or ``complete``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import progress
from .config import SCHEMA_VERSION, RunConfig
from .errors import WriteFailed
from .tracking import Trackers

METRICS_EVERY_S = 1.0  # the longest metrics.csv lags behind a running run's rows

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd  # imported where used: `python -m forgetting.run --help` does not pay for it

CONFIG, METRICS, MANIFEST = "config.json", "metrics.csv", "manifest.json"

# The tidy metric rows: one per evaluation point and evaluated task.
METRIC_COLUMNS = [
    "run_id", "benchmark", "scenario", "method", "lambda", "seed",
    "phase",          # init (untrained model), step (every --eval-every steps), epoch (end of an epoch)
    "trained_task",   # index of the task being trained (-1 for init); A[t][k] uses phase=epoch, last epoch
    "epoch",          # epoch within trained_task, 1-based (0 for init)
    "global_step",    # optimiser steps since the start of the run
    "eval_task", "eval_task_name",
    "accuracy", "loss",
    "kl_base",        # mean KL(p_base || p_current) on eval_task's test inputs (NaN before the base task ends)
    "n_eval",         # number of test examples evaluated
    "chance_accuracy",    # a uniform guess among the outputs eval_task was evaluated on
    "majority_accuracy",  # always predicting eval_task's most frequent test label
    "train_loss",     # mean total training loss of the epoch so far (NaN for init)
    "wall_time",      # seconds since the run started (timing: differs between identical runs)
    # causal LMs only (empty for classifiers), over the test tokens that carry loss; see objectives/causal_lm/evaluate.py
    "nll",            # mean negative log-likelihood per token (nats; "loss" holds the same)
    "perplexity",     # exp(nll)
    "token_accuracy", # fraction of tokens that are the most likely next token
    "answer_accuracy",  # completion tasks with choices: the highest-likelihood choice is the answer
    "exact_match",    # completion tasks: greedy decoding gives the whole response
    "n_tokens",       # number of test tokens that carry loss
    # causal LMs with --max-new-tokens: greedy generations scored as the benchmarks score them
    "gen_exact_match",  # generation equals the reference (stripped)
    "rouge_l",        # mean ROUGE-L F-measure (rouge-score)
    "bleu",           # corpus BLEU / 100 (sacrebleu)
    "gen_score",      # the task's own score of the benchmark (exact match, ROUGE-L, edit similarity or SARI); also accuracy
    "gen_tokens_per_s",  # generated tokens per second (timing: differs between identical runs)
    "lm_eval_metric",  # rows of an lm-evaluation-harness task (--lm-eval-tasks): the metric in accuracy, e.g. acc
    "eval_only",      # 1 on the rows of an evaluation-only task (measured at every evaluation, never trained)
    # runs recorded from another library's trainer (integrations/trl_forgetting.py), at its training logs
    "trainer_kl",     # the KL that trainer logged (e.g. TRL GRPO's kl), beside our kl_base
    "trainer_kl_estimator",  # what trainer_kl estimates, and how (integrations/trl_kl.py)
    "weight_change",  # ‖θ − θ_base‖₂ at this evaluation point (the same on each of its rows; NaN before the base ends)
]
# The columns that hold names: read as text, whatever they look like (a run id such as 8043322e4503
# is a number to a type-guessing reader, and comes back as inf).
TEXT_COLUMNS = ["run_id", "benchmark", "scenario", "method", "phase", "eval_task_name", "trainer_kl_estimator"]


def read_metrics_csv(path: str | Path) -> pd.DataFrame:
    """``metrics.csv`` as written: the text columns as strings (only an empty cell is missing), the
    others as numbers. Every reader of the project's metric files goes through here."""
    import pandas as pd

    return pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, na_values=[""])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0600 would hide results from others


def atomic_write(path: Path, write: Callable[[str], None], sync: bool = True) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``; it is flushed to disk (unless not ``sync``)
    and renamed into place. Unsynced, a killed process still leaves the old or the new file whole;
    only an operating-system crash could lose the new one (see ``sync_file``). An OSError (a full
    disk) names ``path``, not the temporary file, and leaves ``path`` as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)  # a writer that replaces the file (safetensors) would leave 0600
        if sync:
            sync_file(tmp)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sync_file(path: str | Path) -> None:
    """Flush a file's data to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str, sync: bool = True) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), sync)


def metrics_csv(rows: Iterable[dict]) -> str:
    """The rows as CSV text, byte for byte what ``pandas.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(index=False)``
    writes for them (NaN and None as empty fields; a test compares the two), without pandas: a run writes it
    after every evaluation."""
    return csv_header() + csv_lines(rows)


def csv_header() -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(METRIC_COLUMNS)
    return out.getvalue()


def csv_lines(rows: Iterable[dict]) -> str:
    """The CSV lines of ``rows`` (no header): each line depends on its row alone, so a writer renders a row once."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerows(["" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                 for v in (r.get(c) for c in METRIC_COLUMNS)] for r in rows)
    return out.getvalue()


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float written as its string (``"inf"``, ``"-inf"``, ``"nan"``:
    ``float()`` reads them back): strict JSON has no ``Infinity`` or ``NaN``, and readers other than
    Python's refuse them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    text = json.dumps(strict_json(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")


def library_versions() -> dict[str, str]:
    """The installed versions of the libraries a run's numbers depend on."""
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "datasets", "avalanche-lib", "pandas", "numpy", "scikit-learn", "forgetting"):
        version = installed_version(pkg)
        if version is not None:
            out[pkg] = version
    return out


def installed_version(pkg: str) -> str | None:
    """``importlib.metadata.version(pkg)`` (None when not installed), reading only the ``Version:`` line of the
    metadata's header: ``version()`` parses the whole file as an e-mail message, torch's long description
    included (40 ms of a run's start for eight packages)."""
    import importlib.metadata as md

    try:
        dist = md.distribution(pkg)
    except md.PackageNotFoundError:
        return None
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    for line in text.splitlines():
        if not line:  # the end of the header
            break
        if line.startswith("Version:"):
            return line[len("Version:"):].strip()
    return dist.version


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunWriter:
    """Writes one run's directory as the run goes."""

    def __init__(self, config: RunConfig, device: str, extra_manifest: dict | None = None):
        self.config = config
        self.dir = Path(config.results_dir) / config.run_id
        self.rows: list[dict] = []
        self._csv: list[str] = []  # the CSV lines of self.rows[:self._rendered], each rendered once
        self._rendered = 0
        self.position: dict[str, int] = {}  # task, epoch and step of the last rows: where a failure happened
        self.t0 = time.perf_counter()
        self._written_at = float("-inf")
        self._synced = True  # metrics.csv holds every row, flushed to disk
        self._boundary = None  # the last task boundary's background write (a Future), until waited for
        self._boundary_pool = None
        self.trackers = Trackers(config.log_to)  # checked by resolve; nothing imported until start
        self._tracking = False
        self.manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run_id": config.run_id,
            "status": "running",
            "started": now(),
            "ended": None,
            "wall_time_s": None,
            "device": device,
            "host": platform.node(),
            "versions": library_versions(),
            "seed": config.seed,
            "error": None,
            "completed_tasks": 0,
            **(extra_manifest or {}),
        }

    def open(self) -> "RunWriter":
        """Create the run directory and write its files (config, the rows so far, the manifest)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write(self.dir / CONFIG, lambda p: atomic_write_json(p, self.config.to_dict()))
        self.write_metrics()
        self.write_manifest()
        if self.trackers:
            self.trackers.start(self.config.to_dict(), self.dir)
            self._tracking = True
        return self

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add_rows(self, rows: Iterable[dict]) -> None:
        """Keep the rows; metrics.csv is rewritten at most every ``METRICS_EVERY_S`` seconds here (a run
        evaluates many times a second), and always, synced, at task boundaries and at the end."""
        rows = list(rows)
        self.rows.extend(rows)
        if rows:
            last = rows[-1]
            self.position = {"task": last["trained_task"], "epoch": last["epoch"], "step": last["global_step"]}
            self._synced = False
        if time.perf_counter() - self._written_at >= METRICS_EVERY_S:
            self.write_metrics(sync=False)
        progress.evaluation(rows, enabled=self.config.progress)
        if self._tracking:
            self.trackers.rows(rows)

    def add_losses(self, step: int, parts: dict[str, float]) -> None:
        """The training losses of one optimiser step (total, data and each penalty): to the trackers only."""
        if self._tracking:
            self.trackers.losses(step, parts)

    def write(self, path: Path, write: Callable[[Path], None]) -> None:
        """``write(path)`` for one of the run's files; a failure (full disk) becomes WriteFailed naming it."""
        try:
            write(path)
        except OSError as e:
            raise WriteFailed(e.filename or path, e, **self.position) from None

    def write_metrics(self, sync: bool = True) -> None:
        if self._rendered < len(self.rows):  # only the rows added since the last write are rendered
            self._csv.append(csv_lines(self.rows[self._rendered:]))
            self._rendered = len(self.rows)
        text = csv_header() + "".join(self._csv)
        self.write(self.dir / METRICS, lambda p: atomic_write_text(p, text, sync))
        self._written_at = time.perf_counter()
        self._synced = sync

    def flush_rows(self) -> None:
        """Every row so far on disk, synced (before a checkpoint or a manifest says they are there)."""
        if not self._synced:
            self.write_metrics(sync=True)

    def write_manifest(self) -> None:
        self.write(self.dir / MANIFEST, lambda p: atomic_write_json(p, self.manifest))

    def missing_tasks(self, n_tasks: int, epochs: int) -> list[int]:
        """The tasks without rows after their last epoch (a complete run has none); a task that
        ``--stop-at-accuracy`` ended early has its last rows at the epoch it stopped in."""
        last = {int(k): s["epoch"] for k, s in self.manifest.get("stopped_at", {}).items() if s.get("reached")}
        done = {r["trained_task"] for r in self.rows
                if r["phase"] == "epoch" and r["epoch"] == last.get(r["trained_task"], epochs)}
        return [t for t in range(n_tasks) if t not in done]

    def update(self, **fields) -> None:
        self.manifest.update(fields)
        self.write_manifest()

    def task_done(self, trainer, task: int, save: Callable[[], None] | None = None) -> None:
        """A task boundary: the rows up to here are on disk (synced, now); then, in the background while the next
        task trains, ``save()`` writes the checkpoint (its files synced) and after it the manifest says the task
        is complete. Syncing a model's weights to disk is I/O the loop need not wait for; the order, rows then
        checkpoint then manifest, is kept, and an error surfaces at the next boundary or the end (``wait``)."""
        self.flush_rows()
        self.wait()
        stop = getattr(trainer, "stops", {}).get(task)
        if stop is not None:  # set here, while no boundary write reads the manifest; written with completed_tasks
            self.manifest.setdefault("stopped_at", {})[str(task)] = stop

        def boundary() -> None:
            if save is not None:
                save()
            self.update(completed_tasks=task + 1)

        if self._boundary_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._boundary_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forgetting-boundary")
        self._boundary = self._boundary_pool.submit(boundary)

    def wait(self) -> None:
        """The last boundary's checkpoint and manifest are written (its error, a WriteFailed, raised here)."""
        pending, self._boundary = self._boundary, None
        if pending is not None:
            pending.result()

    def resume_from(self, rows: list[dict], elapsed: float, task: int) -> None:
        """Continue a killed run: keep its rows up to the end of ``task`` and its clock."""
        self.rows = rows
        self._csv, self._rendered = [], 0
        self.t0 = time.perf_counter() - elapsed
        self.manifest["completed_tasks"] = task + 1
        self.manifest.setdefault("resumed_at", []).append({"time": now(), "after_task": task})

    def finish(self, status: str, error: str | None = None) -> None:
        try:
            self.wait()
        except WriteFailed:
            if status == "complete":
                raise
        finally:
            if self._boundary_pool is not None:
                self._boundary_pool.shutdown()
                self._boundary_pool = None
        if self.dir.is_dir():
            try:
                self.flush_rows()
            except WriteFailed:
                if status == "complete":
                    raise
                # a failed run on a full disk: its manifest may still fit, and says so
        self.update(status=status, error=error, ended=now(), wall_time_s=round(self.elapsed(), 3))
        if self._tracking:
            self._tracking = False
            self.trackers.artifacts([self.dir / CONFIG, self.dir / METRICS, self.dir / MANIFEST])
            self.trackers.finish(status)


def read_run(run_dir: str | Path) -> tuple[dict, pd.DataFrame, dict]:
    """A run's config, metric rows and manifest (for plots and resumption)."""
    d = Path(run_dir)
    config = json.loads((d / CONFIG).read_text())
    manifest = json.loads((d / MANIFEST).read_text())
    metrics = read_metrics_csv(d / METRICS)
    return config, metrics, manifest


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories (those holding a manifest) at or below the given paths."""
    out = []
    for p in paths:
        p = Path(p)
        if (p / MANIFEST).is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(m.parent for m in p.rglob(MANIFEST)))
    return out
