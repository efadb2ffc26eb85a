"""Reports choose a run's LM columns and figures by its objective's report_measures (from its manifest), not by
which columns its rows happen to carry; summary.csv says what each NLL is per (nll_unit)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from forgetting import report_figures
from forgetting.objectives import Objective
from forgetting.objectives.causal_lm import CausalLM
from forgetting.report_runs import Run
from forgetting.report_summary import forgetting_column, run_table, summarize

CLASSIFIER = [list(m) for m in Objective.report_measures]
LM = [list(m) for m in CausalLM.report_measures]


def _run(run_id: str, model: str, measures, nll: bool, method: str = "kl") -> Run:
    rows = pd.DataFrame({"run_id": run_id, "benchmark": "b", "scenario": "domain", "method": method, "lambda": 1.0,
                         "seed": 0, "phase": "epoch", "trained_task": [0, 1, 1], "epoch": 1, "global_step": [1, 2, 2],
                         "eval_task": [0, 0, 1], "eval_task_name": ["t0", "t0", "t1"], "accuracy": [0.9, 0.5, 0.8],
                         "kl_base": 0.1, **({"nll": [1.0, 2.0, 1.5]} if nll else {})})
    manifest = {"run_id": run_id, "status": "complete", "completed_tasks": 2}
    if measures is not None:
        manifest["report_measures"] = measures
    return Run(Path(run_id), {"benchmark": "b", "scenario": "domain", "method": method, "model": model, "seed": 0},
               manifest, rows)


def test_nll_unit_follows_the_objectives_report_measures_not_the_columns():
    assert _run("a", "mlp", CLASSIFIER, nll=True).nll_unit == ""  # an nll column, but a classifier's measures
    assert _run("b", "gpt2", LM, nll=True).nll_unit == "byte"  # --model gpt2: the byte-level tokenizer
    assert _run("c", "causal:ckpt", LM, nll=True).nll_unit == "token"
    assert _run("d", "gpt2", None, nll=True).nll_unit == "byte"  # a manifest from before report_measures: the rows
    assert _run("e", "mlp", None, nll=False).nll_unit == ""


def test_figures_and_summary_pick_lm_columns_by_report_measures(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(report_figures, "forgetting_curves",
                        lambda runs, table, *a, value="accuracy", **k: drawn.append((value, [r.run_id for r in runs])) or [])
    for name in ("accuracy_heatmaps", "tradeoff", "kl_vs_forgetting"):
        monkeypatch.setattr(report_figures, name, lambda *a, **k: [])
    runs = [_run("clf", "mlp", CLASSIFIER, nll=True), _run("lm", "gpt2", LM, nll=True, method="naive")]
    table = run_table(runs)
    report_figures.figure_set(runs, table, tmp_path, look=report_figures.Look())
    assert drawn == [("accuracy", ["clf", "lm"]), ("nll", ["lm"])]  # the classifier's nll column is not drawn
    assert forgetting_column(table[table.run_id == "clf"]) == "forgetting_max"
    assert forgetting_column(table[table.run_id == "lm"]) == "nll_forgetting_max"
    summary = summarize(table)
    assert dict(zip(summary["method"], summary["nll_unit"].fillna(""))) == {"kl": "", "naive": "byte"}
