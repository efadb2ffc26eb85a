"""The summary tables: one row per run, then mean and 95% t-interval over seeds per experiment.

An experiment is a run's full config without its seed (and without where it ran): runs that
differ only in the seed are pooled, anything else stays apart. Unfinished runs are never pooled
with complete ones; each gets its own row, named by its state.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .metrics import mean_ci, run_summary
from .report_runs import Run
from .results import atomic_write_text

# (column, heading in summary.md, percentage points?) in table order
METRICS = [
    ("average_accuracy", "average accuracy", True),
    ("forgetting_max", "forgetting, max-based (Chaudhry)", True),
    ("forgetting_first", "forgetting, first-based (Avalanche)", True),
    ("bwt", "BWT", True),
    ("fwt", "FWT", True),
    ("new_task_accuracy", "new-task accuracy", True),
    ("old_task_accuracy", "old-task accuracy", True),
    ("kl_new_task", "KL drift, new task", False),
    ("kl_old_tasks", "KL drift, old tasks", False),
    # causal LMs only (a table shows these columns where some run has them)
    ("nll_forgetting_max", "NLL rise, max-based (nats/token)", False),
    ("nll_rise", "NLL rise since learned (nats/token)", False),
    ("new_task_nll", "new-task NLL", False),
    ("old_task_nll", "old-task NLL", False),
    ("wall_time_s", "wall time (s)", False),
]
LM_METRICS = ("nll_forgetting_max", "nll_rise", "new_task_nll", "old_task_nll")
KEYS = ["benchmark", "scenario", "method", "lambda", "variant"]


def assign_experiments(runs: list[Run]) -> dict[str, str]:
    """Run id -> experiment label: ``method, λ=x`` plus whatever else tells apart experiments sharing those."""
    by_ml: dict[tuple, list[Run]] = {}
    for r in runs:
        by_ml.setdefault((r.benchmark, r.scenario, r.method, r.lam), []).append(r)
    labels = {}
    for (_, _, method, lam), group in by_ml.items():
        exps = [r.experiment() for r in group]
        keys = sorted({k for e in exps for k in e})
        varying = [k for k in keys if len({repr(e.get(k)) for e in exps}) > 1]
        for r, e in zip(group, exps):
            extra = ", ".join(f"{k.split('.')[-1]}={e.get(k)}" for k in varying)
            labels[r.run_id] = f"{method}, λ={lam:g}" + (f" ({extra})" if extra else "")
    return labels


def variant_of(label: str) -> str:
    return label.split(" (", 1)[1][:-1] if " (" in label else ""


def run_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: its identity, state, and headline numbers over the tasks it completed."""
    labels = assign_experiments(runs)
    out = []
    for r in runs:
        s = run_summary(r.rows, r.tasks_completed) if len(r.rows) else {"tasks_trained": 0}
        out.append({
            "benchmark": r.benchmark, "scenario": r.scenario, "method": r.method, "lambda": r.lam,
            "variant": variant_of(labels[r.run_id]), "label": labels[r.run_id], "seed": r.seed,
            "status": r.status, "state": r.state(), "tasks_completed": r.tasks_completed, "n_tasks": r.n_tasks,
            **{m: s.get(m, float("nan")) for m, _, _ in METRICS if m != "wall_time_s"},
            "wall_time_s": r.wall_time_s, "run_id": r.run_id, "path": str(r.path),
        })
    return pd.DataFrame(out)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Complete runs pooled per experiment (mean, 95% t-interval); each unfinished run a row of its own."""
    rows = []
    done = table[table["status"] == "complete"]
    for key, g in done.groupby(KEYS, sort=True, dropna=False):
        row = dict(zip(KEYS, key))
        row.update(label=g["label"].iloc[0], status="complete", state=f"complete, {len(g)} seeds",
                   n_seeds=len(g), seeds=" ".join(map(str, sorted(g["seed"]))),
                   tasks_completed=int(g["tasks_completed"].min()), n_tasks=int(g["n_tasks"].max()),
                   run_ids=" ".join(g["run_id"]))
        for m, _, _ in METRICS:
            mean, lo, hi, _n = mean_ci(g[m].tolist())
            row.update({f"{m}_mean": mean, f"{m}_ci95_lo": lo, f"{m}_ci95_hi": hi})
        rows.append(row)
    for _, r in table[table["status"] != "complete"].iterrows():
        row = {k: r[k] for k in KEYS}
        row.update(label=r["label"], status=r["status"], state=r["state"], n_seeds=1, seeds=str(r["seed"]),
                   tasks_completed=r["tasks_completed"], n_tasks=r["n_tasks"], run_ids=r["run_id"])
        for m, _, _ in METRICS:
            row.update({f"{m}_mean": r[m], f"{m}_ci95_lo": float("nan"), f"{m}_ci95_hi": float("nan")})
        rows.append(row)
    cols = KEYS + ["label", "status", "state", "n_seeds", "seeds", "tasks_completed", "n_tasks"] + \
        [f"{m}_{s}" for m, _, _ in METRICS for s in ("mean", "ci95_lo", "ci95_hi")] + ["run_ids"]
    out = pd.DataFrame(rows, columns=cols)
    out["_unfinished"] = out["status"] != "complete"
    out = out.sort_values(["benchmark", "scenario", "_unfinished", "method", "lambda", "variant"], kind="stable")
    return out.drop(columns="_unfinished").reset_index(drop=True)


def forgetting_column(table: pd.DataFrame) -> str:
    """The forgetting a group of runs is judged by: the NLL rise for causal LMs, else accuracy forgetting."""
    if "nll_forgetting_max" in table and table["nll_forgetting_max"].notna().any():
        return "nll_forgetting_max"
    return "forgetting_max"


def kl_fit(table: pd.DataFrame) -> dict | None:
    """Least-squares line (and parabola) of forgetting on KL drift on the new task, over complete runs.

    Forgetting is the max-based accuracy forgetting, or for causal LMs the max-based NLL rise
    (``column`` says which). ``quad`` holds the quadratic fit's coefficients (c0 + c1 x + c2 x^2)
    and R², given at least four runs (Shenfeld et al. 2025 fit forgetting against new-task KL).
    """
    y = forgetting_column(table)
    d = table[(table["status"] == "complete")][["kl_new_task", y]].dropna()
    if len(d) < 3 or d["kl_new_task"].nunique() < 2:
        return None
    fit = stats.linregress(d["kl_new_task"], d[y])
    out = {"slope": float(fit.slope), "intercept": float(fit.intercept), "r2": float(fit.rvalue ** 2), "n": len(d),
           "column": y}
    if len(d) >= 4 and d["kl_new_task"].nunique() >= 3:
        x, v = d["kl_new_task"].to_numpy(float), d[y].to_numpy(float)
        c2, c1, c0 = np.polyfit(x, v, 2)
        resid = v - (c0 + c1 * x + c2 * x * x)
        total = float(((v - v.mean()) ** 2).sum())
        out["quad"] = {"c0": float(c0), "c1": float(c1), "c2": float(c2),
                       "r2": 1.0 - float((resid ** 2).sum()) / total if total > 0 else float("nan")}
    return out


def _cell(r: pd.Series, m: str, pct: bool) -> str:
    f = 100.0 if pct else 1.0
    mean, lo, hi = (r[f"{m}_{s}"] for s in ("mean", "ci95_lo", "ci95_hi"))
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    digits = 1 if pct else (1 if m == "wall_time_s" else 3)
    text = f"{f * mean:.{digits}f}"
    if not math.isnan(lo):
        text += f" [{f * lo:.{digits}f}, {f * hi:.{digits}f}]"
    return text


def markdown(summary: pd.DataFrame, table: pd.DataFrame) -> str:
    lines = [
        "# Summary of runs",
        "",
        "Each row pools the complete runs of one experiment (method and λ, the method's main "
        "hyper-parameter) over seeds: the mean, then in brackets the 95% confidence interval from the "
        "t distribution with n-1 degrees of freedom (mean ± t₀.₉₇₅,ₙ₋₁ · s/√n, s the sample standard "
        "deviation over seeds); one seed gives no interval. Accuracies, forgetting and transfers are in "
        "percentage points, measured after the last task.",
        "",
        "- average accuracy: mean over all tasks of the final accuracy",
        "- forgetting, max-based (Chaudhry et al. 2018): best earlier accuracy of each old task minus its final "
        "accuracy, averaged over old tasks",
        "- forgetting, first-based (Avalanche): accuracy of each old task right after learning it minus its final "
        "accuracy; BWT (Lopez-Paz & Ranzato 2017) is its negative",
        "- FWT: accuracy on each task before training on it (after the previous task) minus the untrained model's",
        "- new-task accuracy: final accuracy on the last task; old-task accuracy: final accuracy on the others",
        "- KL drift, new task: mean KL(p_base ‖ p_final) on the last task's test inputs, p_base the model after "
        "the base task; KL drift, old tasks: the same on the other tasks' test inputs",
        "",
    ]
    if summary["nll_rise_mean"].notna().any():
        lines[-1:-1] = [
            "- causal LMs: accuracy is the answer accuracy of completion tasks (the choice of highest likelihood) "
            "and the next-token accuracy of language-modelling tasks; KL drift is per token; NLL rise, max-based: "
            "each old task's final held-out NLL per token minus its lowest before, averaged (nats); NLL rise since "
            "learned: final minus right after learning it; new-/old-task NLL: final NLL per token"]
    for (bench, scen), s in summary.groupby(["benchmark", "scenario"], sort=True):
        lines += [f"## {bench}, {scen}-incremental", ""]
        shown = [(m, h, pct) for m, h, pct in METRICS
                 if m not in LM_METRICS or s[f"{m}_mean"].notna().any()]  # LM columns only for LM runs
        head = ["method", "λ", "runs"] + [h for _, h, _ in shown]
        if (s["variant"] != "").any():
            head.insert(2, "variant")
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in s.iterrows():
            runs = (f"{r['n_seeds']} (seeds {r['seeds']})" if r["status"] == "complete" else
                    f"**unfinished**: {r['state']} (seed {r['seeds']}, run {r['run_ids']})")
            cells = [r["method"], f"{r['lambda']:g}", runs]
            if (s["variant"] != "").any():
                cells.insert(2, r["variant"] or "–")
            cells += [_cell(r, m, pct) for m, _, pct in shown]
            lines.append("| " + " | ".join(cells) + " |")
        unfinished = s[s["status"] != "complete"]
        lines.append("")
        if len(unfinished):
            lines += [f"{len(unfinished)} unfinished run(s) are listed on their own rows, with their numbers over "
                      "the tasks they completed; they are not pooled into the means and not used in the "
                      "trade-off and KL figures (the forgetting curves show them as far as they got).", ""]
        fit = kl_fit(table[(table["benchmark"] == bench) & (table["scenario"] == scen)])
        if fit and fit["column"] == "nll_forgetting_max":
            quad = fit.get("quad")
            lines += [f"NLL rise (max-based) against KL drift on the new task over {fit['n']} complete runs: "
                      f"least-squares slope {fit['slope']:.3f} nats/token per nat, R² = {fit['r2']:.3f}"
                      + (f"; quadratic fit {quad['c0']:.3f} + {quad['c1']:.3f} x + {quad['c2']:.3f} x², "
                         f"R² = {quad['r2']:.3f}" if quad else "") + ".", ""]
        elif fit:
            quad = fit.get("quad")
            lines += [f"Forgetting (max-based) against KL drift on the new task over {fit['n']} complete runs: "
                      f"least-squares slope {100 * fit['slope']:.2f} points per nat, R² = {fit['r2']:.3f}"
                      + (f"; quadratic fit R² = {quad['r2']:.3f}" if quad else "") + ".", ""]
    return "\n".join(lines) + "\n"


def write_summary(table: pd.DataFrame, out: Path) -> list[Path]:
    """``summary.csv`` (fractions, seconds) and ``summary.md`` (percentage points) in ``out``."""
    summary = summarize(table)
    csv, md = out / "summary.csv", out / "summary.md"
    atomic_write_text(csv, summary.to_csv(index=False))
    atomic_write_text(md, markdown(summary, table))
    return [csv, md]


__all__ = ["METRICS", "assign_experiments", "kl_fit", "markdown", "run_table", "summarize", "write_summary"]
