"""The Python API for notebooks: one run as a DataFrame, and every run's rows with its config beside them.

``forgetting.run(benchmark=..., method=..., **options)`` goes through the same ``registry.resolve``
and run id as ``python -m forgetting.run`` (a complete run with the same config is read back, not
run again); ``forgetting.load_results(paths)`` reads what ``forgetting.plot`` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def experiment(benchmark: str = "split-digits", method: str = "kl", *, force: bool = False, resume: bool = False,
               results_dir: str | Path | None = None, progress: bool = False, **options) -> pd.DataFrame:
    """Run one experiment and return its tidy metric rows (one per evaluation point and task).

    ``options`` are any option of the chosen stream, model, method or loop, by their config names
    (``scenario="class"``, ``model="bert"``, ``kl_lambda=0.5``, ``epochs=2``, ``data_dir=...``). An
    option the components do not take raises ``BadInput`` naming it. ``results_dir`` None (the default):
    ``results/<the run's budget>`` (``results/epochs=2,batch_size=32``: ``forgetting.budget``), so runs of
    different budgets never share a folder by accident. The run's directory is in ``df.attrs["run_dir"]``,
    its results folder in ``df.attrs["results_dir"]`` and its status (``complete`` or ``skipped``) in
    ``df.attrs["status"]``.
    """
    from . import registry
    from .running import run_experiment

    config = registry.make_config(benchmark=benchmark, method=method,
                                  results_dir=None if results_dir is None else str(results_dir),
                                  progress=progress, **options)
    run_dir, rows, status = run_experiment(config, force=force, resume=resume, resolved=True)
    rows = rows.copy()
    rows.attrs.update(run_dir=str(run_dir), results_dir=config.results_dir, status=status, run_id=config.run_id)
    return rows


run = experiment  # ``forgetting.run(...)``: the module ``forgetting.run`` called


def load_results(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Every run at or below ``paths``: its metric rows with its config joined as columns.

    Config columns are the flat fields (``model``, ``epochs``, ``lr``, ...) and every option as
    ``method.kl_lambda``, ``stream.n_tasks``, ``model.hidden``, ... so runs that differ in any
    option are told apart without opening ``config.json``; ``status``, ``tasks_completed`` and
    ``wall_time_s`` are the run's manifest's (so ``forgetting.plot.figures`` can draw from this frame).
    """
    import pandas as pd

    from .report_runs import load_runs

    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    for r in load_runs(paths):
        cfg = r.config
        columns = {k: cfg.get(k) for k in ("model", "epochs", "batch_size", "lr", "eval_every", "eval_subset")}
        for section, key in (("method", "hparams"), ("model", "model_options"), ("stream", "stream_options")):
            for name, value in (cfg.get(key) or {}).items():
                columns[f"{section}.{name}"] = value if not isinstance(value, list) else tuple(value)
        columns["status"] = r.status
        columns["tasks_completed"] = r.tasks_completed
        columns["wall_time_s"] = r.wall_time_s
        frame = r.rows.copy()
        for k, v in columns.items():
            frame[k] = [v] * len(frame)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def runs_from_frame(df: pd.DataFrame) -> list:
    """The runs of a ``load_results`` frame (or any subset of its rows) as the reports read them."""
    from .report_runs import Run
    from .results import METRIC_COLUMNS

    needed = [c for c in ("run_id", "status", "tasks_completed") if c not in df.columns]
    if needed:
        from .errors import BadInput

        raise BadInput(f"not a frame from forgetting.load_results: no column {', '.join(needed)}")
    runs = []
    for run_id, g in df.groupby("run_id", sort=False):
        first = g.iloc[0]

        def present(v):
            return not (isinstance(v, float) and v != v)  # NaN: an option this run's components lack

        config = {k: first[k] for k in ("benchmark", "scenario", "method", "seed", "model", "epochs", "batch_size",
                                        "lr", "eval_every", "eval_subset") if k in g.columns and present(first[k])}
        for section, key in (("method", "hparams"), ("model", "model_options"), ("stream", "stream_options")):
            config[key] = {c.split(".", 1)[1]: first[c] for c in g.columns
                           if c.startswith(section + ".") and present(first[c])}
        manifest = {"run_id": run_id, "status": first["status"], "completed_tasks": int(first["tasks_completed"]),
                    "wall_time_s": first.get("wall_time_s")}
        rows = g[[c for c in METRIC_COLUMNS if c in g.columns]].reset_index(drop=True)
        runs.append(Run(Path(str(run_id)), config, manifest, rows))
    return runs
