"""Experiment trackers (``--log-to tensorboard|mlflow|wandb``): the run's numbers streamed where researchers look.

One small class per tracker behind one interface: ``start`` (the config as hyper-parameters),
``losses`` (the training losses of one optimiser step), ``rows`` (every evaluation row, as scalars
per evaluated task), ``artifact`` (a file: the run's config, metrics, figures) and ``finish``.
The run directory stays the record; a tracker is a view of it and never changes a run id.
Every tracker works offline: TensorBoard event files and W&B offline runs go into the run
directory, MLflow into ``sqlite:///RESULTS_DIR/mlflow.db`` (files in RESULTS_DIR/mlartifacts)
unless ``MLFLOW_TRACKING_URI`` names another store or a server.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import BadInput
from .extras import require

TRACKERS = ("tensorboard", "mlflow", "wandb")
MODULES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow",), "wandb": ("wandb",)}
# the numbers of an evaluation row that go to a tracker, one series per evaluated task
ROW_SCALARS = ("accuracy", "loss", "kl_base",
               "perplexity", "token_accuracy", "answer_accuracy", "exact_match")  # the last four: causal LMs


def check(names: Iterable[str]) -> list[str]:
    """The trackers named, each once, in order; BadInput naming a bad one or the extra a missing library needs."""
    out: list[str] = []
    for n in [names] if isinstance(names, str) else names:
        if n not in TRACKERS:
            raise BadInput(f"--log-to: bad value {n!r}, allowed: {', '.join(TRACKERS)}")
        require("track", f"--log-to {n}", modules=MODULES[n])
        if n not in out:
            out.append(n)
    return out


def flat_params(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as flat ``section.option`` hyper-parameters (lists as JSON text)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        elif v is None or isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def row_scalars(row: dict) -> dict[str, float]:
    """One evaluation row as tracker scalars: ``eval/accuracy/task_k``, ... and the epoch's mean training loss."""
    k = int(row["eval_task"])
    out = {f"eval/{m}/task_{k}": float(row[m]) for m in ROW_SCALARS
           if row.get(m) is not None and not math.isnan(float(row[m]))}
    if row.get("train_loss") is not None and not math.isnan(float(row["train_loss"])):
        out["train/epoch_mean_loss"] = float(row["train_loss"])
    return out


def evaluation_scalars(rows: Sequence[dict]) -> dict[str, float]:
    """The scalars of one evaluation (its rows, one per task), with the mean accuracy over the tasks seen."""
    out: dict[str, float] = {}
    for r in rows:
        out.update(row_scalars(r))
    seen = [float(r["accuracy"]) for r in rows if int(r["eval_task"]) <= max(int(r["trained_task"]), 0)]
    if seen:
        out["eval/mean_accuracy_seen"] = sum(seen) / len(seen)
    return out


def experiment_name(config: dict) -> str:
    """Where a tracker groups runs: ``forgetting/BENCHMARK-SCENARIO`` (or the config's own ``experiment``)."""
    if config.get("experiment"):
        return f"forgetting/{config['experiment']}"
    stream = config.get("stream", {})
    return f"forgetting/{stream.get('name')}-{stream.get('options', {}).get('scenario')}"


def mlflow_uri(results_dir: str | Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def prepare_stores(names: Sequence[str], results_dir: str | Path) -> None:
    """Create the local MLflow store once, before worker processes open it at the same time."""
    if "mlflow" in names:
        from mlflow.tracking import MlflowClient

        Path(results_dir).mkdir(parents=True, exist_ok=True)
        MlflowClient(tracking_uri=mlflow_uri(results_dir)).search_experiments(max_results=1)


def log_report(names: Sequence[str], files: Iterable[Path], report_dir: Path, results_dir: str | Path) -> None:
    """A report's files (figures, summary, report.html) as the files of a tracker run named ``report``."""
    trackers = Trackers(names)
    trackers.start({"experiment": "report", "results_dir": str(results_dir), "report_dir": str(report_dir)},
                   Path(report_dir))
    trackers.artifacts([Path(f) for f in files if Path(f).suffix in (".png", ".svg", ".pdf", ".csv", ".md", ".html")])
    trackers.finish("complete")


class Tracker:
    """The interface; each method is a no-op here."""

    name = ""

    def start(self, config: dict, run_dir: Path) -> None: ...

    def losses(self, step: int, parts: dict[str, float]) -> None: ...

    def rows(self, rows: Sequence[dict]) -> None: ...

    def artifact(self, path: Path) -> None: ...

    def finish(self, status: str) -> None: ...


class TensorBoardTracker(Tracker):
    """Event files in RUN_DIR/tensorboard (``tensorboard --logdir RESULTS_DIR`` shows every run by its id)."""

    name = "tensorboard"

    def start(self, config, run_dir):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        params = flat_params(config)
        self.writer.add_text("config", "\n".join(f"    {k} = {v}" for k, v in sorted(params.items())), 0)
        self.writer.add_hparams({k: v for k, v in params.items() if isinstance(v, (int, float, str, bool))}, {},
                                run_name=".")

    def losses(self, step, parts):
        for k, v in parts.items():
            self.writer.add_scalar(f"train/{k}", v, step)

    def rows(self, rows):
        if rows:
            step = int(rows[0]["global_step"])
            for k, v in evaluation_scalars(rows).items():
                self.writer.add_scalar(k, v, step)

    def artifact(self, path):
        path = Path(path)
        if path.suffix.lower() == ".png":
            import matplotlib.image as mpimg

            self.writer.add_image(f"figures/{path.stem}", mpimg.imread(path)[..., :3], 0, dataformats="HWC")

    def finish(self, status):
        self.writer.add_text("status", status, 0)
        self.writer.close()


class MLflowTracker(Tracker):
    """An MLflow run in experiment ``forgetting/BENCHMARK-SCENARIO``; the losses of a task's steps go in batches."""

    name = "mlflow"
    BATCH = 1000  # MLflow's limit of metrics per log_batch call

    def start(self, config, run_dir):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=mlflow_uri(config["results_dir"]))
        self._metric = mlflow.entities.Metric
        exp_name = experiment_name(config)
        exp = self.client.get_experiment_by_name(exp_name)
        # with the local store, files go beside it (MLflow's default is ./mlruns wherever the run starts)
        files = None if os.environ.get("MLFLOW_TRACKING_URI") else \
            (Path(config["results_dir"]).resolve() / "mlartifacts").as_uri()
        if exp is None:
            try:
                self.client.create_experiment(exp_name, artifact_location=files)
            except mlflow.exceptions.MlflowException:  # another worker of the sweep made it first
                pass
            exp = self.client.get_experiment_by_name(exp_name)
        exp_id = exp.experiment_id
        self.run_id = self.client.create_run(exp_id, run_name=Path(run_dir).name,
                                             tags={"forgetting.run_id": Path(run_dir).name,
                                                   "forgetting.run_dir": str(Path(run_dir).resolve())}).info.run_id
        params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in sorted(flat_params(config).items())]
        for i in range(0, len(params), 100):  # MLflow's limit of params per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.pending: list = []

    def _now(self) -> int:
        import time

        return int(time.time() * 1000)

    def _flush(self):
        for i in range(0, len(self.pending), self.BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + self.BATCH])
        self.pending = []

    def losses(self, step, parts):
        ts = self._now()
        self.pending += [self._metric(f"train/{k}", float(v), ts, step) for k, v in parts.items()]
        if len(self.pending) >= self.BATCH:
            self._flush()

    def rows(self, rows):
        if rows:
            ts, step = self._now(), int(rows[0]["global_step"])
            self.pending += [self._metric(k, v, ts, step) for k, v in evaluation_scalars(rows).items()]
            self._flush()

    def artifact(self, path):
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, status):
        self._flush()
        self.client.set_tag(self.run_id, "forgetting.status", status)
        self.client.set_terminated(self.run_id, "FINISHED" if status == "complete" else "FAILED")


class WandbTracker(Tracker):
    """A W&B run, offline unless WANDB_MODE says otherwise, written under RUN_DIR/wandb (``wandb sync`` uploads it)."""

    name = "wandb"

    def start(self, config, run_dir):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "forgetting"), name=Path(run_dir).name,
                              group=experiment_name(config).split("/", 1)[1],
                              dir=str(run_dir), config=flat_params(config),
                              mode=os.environ.get("WANDB_MODE", "offline"),
                              settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True),
                              reinit="create_new")
        self.run.define_metric("*", step_metric="global_step")

    def losses(self, step, parts):
        self.run.log({"global_step": step, **{f"train/{k}": v for k, v in parts.items()}})

    def rows(self, rows):
        if rows:
            self.run.log({"global_step": int(rows[0]["global_step"]), **evaluation_scalars(rows)})

    def artifact(self, path):
        self.run.save(str(path), base_path=str(Path(path).parent), policy="now")

    def finish(self, status):
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "complete" else 1)


CLASSES = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}


class Trackers:
    """Every tracker a run logs to, called at the points the run already records."""

    def __init__(self, names: Iterable[str]):
        self.trackers = [CLASSES[n]() for n in check(names)]

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def start(self, config: dict, run_dir: Path) -> None:
        for t in self.trackers:
            t.start(config, run_dir)

    def losses(self, step: int, parts: dict[str, float]) -> None:
        for t in self.trackers:
            t.losses(step, parts)

    def rows(self, rows: Sequence[dict]) -> None:
        """One evaluation's rows, grouped by evaluation point (an evaluation gives one row per task)."""
        from .progress import evaluations

        for group in evaluations(rows):
            for t in self.trackers:
                t.rows(group)

    def artifacts(self, paths: Iterable[Path]) -> None:
        for p in paths:
            for t in self.trackers:
                t.artifact(p)

    def finish(self, status: str) -> None:
        for t in self.trackers:
            t.finish(status)


__all__ = ["TRACKERS", "Tracker", "Trackers", "check", "evaluation_scalars", "flat_params", "log_report",
           "prepare_stores"]
