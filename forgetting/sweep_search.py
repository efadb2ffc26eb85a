"""``forgetting-sweep SUITE --search N``: a hyper-parameter search over a suite's ranges, through Optuna.

Each ``grid.OPTION`` of the suite's (single) experiment is a dimension: numbers span [least, greatest]
(log scale when all are positive and span two decades or more; integers stay integers), strings and
booleans are categorical. A trial samples a point, runs it at every seed of the experiment as
normal runs (their own run ids, rows, claims and resume, in the sweep's executor), and scores it by
the mean over seeds of the objective: ``average_accuracy`` (maximised), ``forgetting`` (max-based,
minimised) or ``pareto`` (new-task and old-task accuracy, both maximised: Optuna's multi-objective
search keeps their Pareto front). The study lives in ``RESULTS_DIR/search.db`` (SQLite), so running
the command again continues it; a trial whose runs are already complete reads them back.

Optuna rather than Ray Tune: it is a library that proposes points and takes back scores (ask/tell)
while the runs stay ours (the same executors, claims and files as a grid), its studies persist in a
SQLite file, and its TPE and NSGA-II samplers cover one and two objectives; Ray Tune would take over
the trial processes and needs Ray.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from .config import Component, RunConfig
from .errors import BadInput
from .extras import require

OBJECTIVES = {"average_accuracy": ["maximize"], "forgetting": ["minimize"], "pareto": ["maximize", "maximize"]}
STUDY_FILE = "search.db"


def import_optuna():
    require("search", "--search", ("optuna",))
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def space(points: list[tuple[str, dict]]) -> tuple[str, dict, dict]:
    """The method, its fixed options and its dimensions (option -> sorted values) from a grid's points."""
    methods = {m for m, _ in points}
    if len(methods) != 1:
        raise BadInput(f"--search: the experiment has {len(methods)} methods ({', '.join(sorted(methods))}); "
                       "a search takes one [[experiment.method]] with grid.OPTION ranges")
    keys = points[0][1].keys()
    values = {k: sorted({p[k] for _, p in points}, key=repr) for k in keys}
    dims = {k: v for k, v in values.items() if len(v) > 1}
    if not dims:
        raise BadInput("--search: the experiment's method has no grid.OPTION with two or more values to search over")
    return methods.pop(), {k: v[0] for k, v in values.items() if len(v) == 1}, dims


def suggest(trial, name: str, values: list):
    """One dimension: a number range (log when it spans two decades of positive values) or a choice."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        lo, hi = min(values), max(values)
        log = lo > 0 and hi / lo >= 100
        if all(isinstance(v, int) for v in values):
            return trial.suggest_int(name, int(lo), int(hi), log=log)
        return trial.suggest_float(name, float(lo), float(hi), log=log)
    return trial.suggest_categorical(name, list(values))


def score(results_dir: str, run_ids: list[str], objective: str) -> list[float]:
    """The objective's values: the mean over the trial's seeds."""
    from .metrics import run_summary
    from .results import read_run

    sums: dict[str, list[float]] = {}
    for rid in run_ids:
        _, rows, manifest = read_run(Path(results_dir) / rid)
        if manifest.get("status") != "complete":
            raise BadInput(f"run {rid} did not complete ({manifest.get('status')})")
        s = run_summary(rows)
        for key in ("average_accuracy", "forgetting_max", "new_task_accuracy", "old_task_accuracy"):
            sums.setdefault(key, []).append(float(s[key]))
    mean = {k: sum(v) / len(v) for k, v in sums.items()}
    if objective == "pareto":
        return [mean["new_task_accuracy"], mean["old_task_accuracy"]]
    return [mean["average_accuracy" if objective == "average_accuracy" else "forgetting_max"]]


def run_search(experiment, configs: list[RunConfig], n_trials: int, objective: str, results_dir: str,
               execute: Callable[[list[RunConfig]], dict], say: Callable[[str], None], study_name: str) -> list[dict]:
    """``n_trials`` more trials of the study; each trial's runs through ``execute`` (the sweep's executor).
    Returns every finished trial of the study: its number, point, values and run ids."""
    if objective not in OBJECTIVES:
        raise BadInput(f"--objective: {objective!r}, allowed: {', '.join(OBJECTIVES)}")
    optuna = import_optuna()
    from . import registry

    method, fixed, dims = space(experiment.points)
    template = configs[0]
    storage = f"sqlite:///{Path(results_dir).resolve() / STUDY_FILE}"
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    directions = OBJECTIVES[objective]
    sampler = optuna.samplers.NSGAIISampler(seed=0) if len(directions) > 1 else optuna.samplers.TPESampler(seed=0)
    study = optuna.create_study(study_name=f"{study_name}:{objective}", storage=storage, directions=directions,
                                sampler=sampler, load_if_exists=True)
    for _ in range(n_trials):
        trial = study.ask()
        point = {name: suggest(trial, name, values) for name, values in dims.items()}
        runs = []
        for seed in experiment.seeds:
            c = replace(template, method=Component(method, {**fixed, **point}), loop={**template.loop, "seed": seed})
            runs.append(registry.resolve(c))
        outcomes = execute([c for c in runs])
        failed = [o for o in outcomes.values() if o.status in ("failed", "interrupted")]
        if failed:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            say(f"trial {trial.number} {point}: {len(failed)} run(s) failed, e.g. {failed[0].error}")
            continue
        values = score(results_dir, [c.run_id for c in runs], objective)
        trial.set_user_attr("run_ids", [c.run_id for c in runs])
        study.tell(trial, values if len(values) > 1 else values[0])
        say(f"trial {trial.number} {point}: {objective} {', '.join(f'{v:.4f}' for v in values)} "
            f"(runs {', '.join(c.run_id for c in runs)})")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return [{"number": t.number, "params": t.params, "values": t.values, "run_ids": t.user_attrs.get("run_ids", []),
             "best": t.number in {b.number for b in study.best_trials}} for t in done]
