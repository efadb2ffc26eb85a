"""A run's budget (epochs, batch size, data sizes) and the default results folder named after it.

Runs that differ in budget are not comparable point for point (``forgetting.plot`` draws each budget
in figures of its own). So that such runs do not share a results folder by accident, a run given no
results directory goes to ``results/<its budget>/`` (``results/epochs=5,batch_size=32``), a sweep of
suite files to ``results/<suite name>/`` and a one-off grid to ``results/<its runs' budget>/``. An
explicit ``--results-dir`` is used as given; run ids never depend on where a run is written.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

RESULTS_ROOT = "results"
# options that set a run's budget: runs that differ in them are not comparable point for point
BUDGET_KEYS = ("epochs", "batch_size", "text_train_per_task", "text_test_per_task", "train_per_class", "eval_subset")
ALWAYS = ("epochs", "batch_size")  # named in every folder; the others where set (their default, 0, is all or off)


def budget(config) -> dict[str, Any]:
    """``epochs`` and ``batch_size``, then each other budget option the run sets (not 0: all examples, or
    off), in ``BUDGET_KEYS`` order. ``config``: a ``RunConfig``."""
    values = {**config.stream.values(), **{k: getattr(config, k) for k in ("epochs", "batch_size", "eval_subset")}}
    return {k: values[k] for k in BUDGET_KEYS if k in ALWAYS or values.get(k)}


def folder_name(values: dict[str, Any]) -> str:
    """``epochs=5,batch_size=32``: the budget as one path component."""
    return ",".join(f"{k}={v}" for k, v in values.items())


def run_results_dir(config) -> str:
    """Where a run given no results directory goes: ``results/<its budget>``."""
    return f"{RESULTS_ROOT}/{folder_name(budget(config))}"


def grid_results_dir(configs: Iterable) -> str:
    """Where a one-off grid given no results directory goes: ``results/<budget>``, the runs' budget; where
    the grid spans budgets (``--grid epochs=1,2``), each differing value joined by '+' (``epochs=1+2,...``)."""
    budgets = [budget(c) for c in configs]
    merged: dict[str, list] = {}
    for k in BUDGET_KEYS:
        for b in budgets:
            v = b.get(k, 0)  # an option left out of a run's budget is 0 there (all, or off)
            if v not in merged.setdefault(k, []):
                merged[k].append(v)
    kept = {k: vs for k, vs in merged.items() if k in ALWAYS or vs != [0]}
    return f"{RESULTS_ROOT}/" + ",".join(f"{k}={'+'.join(map(str, vs))}" for k, vs in kept.items())


def suite_results_dir(names: Iterable[str]) -> str:
    """Where a sweep of suites given no results directory goes: ``results/<suite name>`` (several suites: their
    names joined by '+'); characters a path component should not hold become '_'."""
    unique = list(dict.fromkeys(re.sub(r"[^\w.,=+-]", "_", n).strip(".") or "suite" for n in names))
    return f"{RESULTS_ROOT}/{'+'.join(unique)}"
