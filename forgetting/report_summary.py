"""The summary tables: one row per run, then mean and 95% t-interval over seeds per experiment.

An experiment is a run's full config without its seed (and without where it ran): runs that
differ only in the seed are pooled, anything else stays apart. Unfinished runs are never pooled
with complete ones; each gets its own row, named by its state.

Experiments are named as a reader would: every part of a composed method with its strength
(``kl λ=1 + rdrop α=1``), no strength for a method that has none (``replay``), and ``naive``
for a penalty at strength 0. Intervals are t-intervals cut to the range of the quantity
(accuracy within [0, 1], ...), and a cut one is flagged.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .metrics import accuracy_matrix, at_majority_rate, bounded_ci, run_summary
from .report_runs import Run
from .results import atomic_write_text

# (column, heading in summary.md, percentage points?, range of the quantity) in table order
INF = math.inf
METRICS = [
    ("average_accuracy", "average accuracy", True, (0.0, 1.0)),
    ("forgetting_max", "forgetting, max-based (Chaudhry)", True, (-1.0, 1.0)),
    ("forgetting_first", "forgetting, first-based (Avalanche)", True, (-1.0, 1.0)),
    ("bwt", "BWT", True, (-1.0, 1.0)),
    ("fwt", "FWT", True, (-1.0, 1.0)),
    ("new_task_accuracy", "new-task accuracy", True, (0.0, 1.0)),
    ("old_task_accuracy", "old-task accuracy", True, (0.0, 1.0)),
    ("kl_new_task", "KL drift, new task", False, (0.0, INF)),
    ("kl_old_tasks", "KL drift, old tasks", False, (0.0, INF)),
    # causal LMs only (a table shows these columns where some run has them)
    ("answer_accuracy", "answer accuracy", True, (0.0, 1.0)),
    ("nll_forgetting_max", "NLL rise, max-based (nats/token)", False, (-INF, INF)),
    ("nll_rise", "NLL rise since learned (nats/token)", False, (-INF, INF)),
    ("new_task_nll", "new-task NLL", False, (0.0, INF)),
    ("old_task_nll", "old-task NLL", False, (0.0, INF)),
    ("wall_time_s", "wall time (s)", False, (0.0, INF)),
]
LM_METRICS = ("answer_accuracy", "nll_forgetting_max", "nll_rise", "new_task_nll", "old_task_nll")
KEYS = ["benchmark", "scenario", "label"]
SYMBOLS = {"lambda": "λ", "alpha": "α", "gamma": "γ"}


def _strength_symbol(option: str) -> str:
    """``kl_lambda`` -> λ, ``rdrop_alpha`` -> α, ``si_c`` -> c."""
    tail = option.rsplit("_", 1)[-1]
    return SYMBOLS.get(tail, tail)


def number(v: float) -> str:
    """1.0 -> '1', 0.3 -> '0.3', 100000.0 -> '1e5', 0.0001 -> '1e-4'."""
    if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3):
        mantissa, exponent = f"{v:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{v:g}"


def display_name(method: str, hparams: dict) -> tuple[str, list[str]]:
    """A method spec as a reader names it, and the hyper-parameters that name shows.

    Each part with a strength shows it (``kl λ=1 + rdrop α=1``; alone: ``kl, λ=1``); a part
    that is plain fine-tuning at strength 0 is left out, and nothing left is ``naive``.
    """
    from .registry import known_method_classes

    classes = known_method_classes(method)  # never imports a module named in a results file
    if classes is None:  # a method this installation does not know: its spec as recorded
        return method, []
    parts, shown = [], []
    for cls in classes:
        opt = cls.strength_option
        value = hparams.get(opt) if opt else None
        if opt and value is not None:
            shown.append(opt)
            if getattr(cls, "naive_at_zero", False) and float(value) == 0:
                continue
            parts.append((cls.name, f"{_strength_symbol(opt)}={number(float(value))}"))
        elif cls.name != "naive" or len(classes) == 1:
            parts.append((cls.name, ""))
    if not parts:
        return "naive", shown
    if len(parts) == 1:
        name, strength = parts[0]
        return (f"{name}, {strength}" if strength else name), shown
    return " + ".join(f"{n} {s}".strip() for n, s in parts), shown


# how a reader writes a setting that tells experiments apart (else ``option=value``); "" leaves it out
READABLE = {"lora_rank": lambda v: f"LoRA r={v}" if v else "",
            "temperature": lambda v: f"T={number(float(v))}"}


def readable(key: str, value) -> str:
    """``model.lora_rank``, 8 -> ``LoRA r=8``; ``method.temperature``, 2.0 -> ``T=2``; else ``name=value``."""
    name = key.split(".")[-1]
    try:
        return READABLE[name](value) if name in READABLE else f"{name}={value}"
    except (TypeError, ValueError):
        return f"{name}={value}"


def assign_experiments(runs: list[Run]) -> dict[str, str]:
    """Run id -> experiment label: ``display_name`` plus whatever else tells apart experiments sharing it.

    Where a penalty at strength 0 is named ``naive`` beside a real ``naive`` run, it says what it
    was (``naive (kl, λ=0)``).
    """
    named: dict[str, tuple[str, list[str]]] = {r.run_id: display_name(r.method, r.config.get("hparams", {}))
                                               for r in runs}
    by_name: dict[tuple, list[Run]] = {}
    for r in runs:
        by_name.setdefault((r.benchmark, r.scenario, named[r.run_id][0]), []).append(r)
    labels = {}
    for (_, _, name), group in by_name.items():
        methods = {r.method for r in group}
        for method in sorted(methods):
            sub = [r for r in group if r.method == method]
            base = name
            if len(methods) > 1 and method != name.split(",")[0].split(" ")[0]:
                _, shown = named[sub[0].run_id]
                zero = ", ".join(f"{_strength_symbol(o)}=0" for o in shown
                                 if float(sub[0].config.get("hparams", {}).get(o, 1)) == 0)
                base = f"{name} ({method}, {zero})" if zero else f"{name} ({method})"
            skip = {f"hparams.{o}" for o in named[sub[0].run_id][1]}
            exps = [r.experiment() for r in sub]
            keys = sorted({k for e in exps for k in e} - skip)
            varying = [k for k in keys if len({repr(e.get(k)) for e in exps}) > 1]
            for r, e in zip(sub, exps):
                parts = [text for text in (readable(k, e.get(k)) for k in varying) if text]
                if base == "naive" and parts and all(text.startswith("LoRA ") for text in parts):
                    labels[r.run_id] = ", ".join(parts)  # naive fine-tuning through adapters: LoRA r=8
                else:
                    labels[r.run_id] = base + (f" [{', '.join(parts)}]" if parts else "")
    return labels


def variant_of(label: str) -> str:
    return label.split(" [", 1)[1][:-1] if " [" in label else ""


def name_of(label: str) -> str:
    return label.split(" [", 1)[0]


def run_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: its identity, state, and headline numbers over the tasks it completed."""
    labels = assign_experiments(runs)
    out = []
    for r in runs:
        s = run_summary(r.rows, r.tasks_completed) if len(r.rows) else {"tasks_trained": 0}
        stuck = at_majority_rate(r.rows, r.tasks_completed) if len(r.rows) else []
        out.append({
            "benchmark": r.benchmark, "scenario": r.scenario, "method": r.method, "lambda": r.lam,
            "name": name_of(labels[r.run_id]), "variant": variant_of(labels[r.run_id]), "label": labels[r.run_id],
            "seed": r.seed, "nll_unit": r.nll_unit, "status": r.status, "state": r.state(), "tasks_completed": r.tasks_completed,
            "n_tasks": r.n_tasks,
            **{m: s.get(m, float("nan")) for m, *_ in METRICS if m != "wall_time_s"},
            "wall_time_s": r.wall_time_s,
            "weight_change": s.get("weight_change", float("nan")),  # a predictor the KL figure tests, not a table column
            "at_majority_rate": "; ".join(f"A[{t}][{k}] = {100 * rate:.1f}%" for t, k, rate in stuck),
            "report_measures": r.report_measures,
            "run_id": r.run_id, "path": str(r.path),
        })
    return pd.DataFrame(out)


def reference_accuracies(runs: list[Run]) -> pd.DataFrame:
    """Per benchmark, scenario and task: chance and majority-class accuracy after the last task.

    From the evaluation rows of the first complete run of each stream (they depend on the test
    labels and the outputs evaluated, not on the model); streams whose rows predate these columns
    are left out.
    """
    out, seen = [], set()
    for r in sorted(runs, key=lambda r: not r.complete):
        key = (r.benchmark, r.scenario)
        if key in seen or not len(r.rows) or "majority_accuracy" not in r.rows:
            continue
        chance = accuracy_matrix(r.rows, r.tasks_completed, "chance_accuracy")
        majority = accuracy_matrix(r.rows, r.tasks_completed, "majority_accuracy")
        if not majority.size or pd.isna(majority[-1]).all():
            continue
        seen.add(key)
        names = r.rows.drop_duplicates("eval_task").set_index("eval_task")["eval_task_name"]
        for k in range(majority.shape[1]):
            out.append({"benchmark": r.benchmark, "scenario": r.scenario, "task": k, "task_name": names.get(k, str(k)),
                        "chance_accuracy": float(chance[-1, k]), "majority_accuracy": float(majority[-1, k])})
    return pd.DataFrame(out, columns=["benchmark", "scenario", "task", "task_name", "chance_accuracy",
                                      "majority_accuracy"])


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Complete runs pooled per experiment (mean, 95% t-interval); each unfinished run a row of its own."""
    rows = []
    done = table[table["status"] == "complete"]
    first = ["method", "lambda", "name", "variant", "report_measures", "nll_unit"]  # nll_unit: byte, token, empty
    for key, g in done.groupby(KEYS, sort=True, dropna=False):
        row = dict(zip(KEYS, key))
        row.update({k: g[k].iloc[0] for k in first})
        row.update(status="complete", state=f"complete, {len(g)} seeds",
                   n_seeds=len(g), seeds=" ".join(map(str, sorted(g["seed"]))),
                   tasks_completed=int(g["tasks_completed"].min()), n_tasks=int(g["n_tasks"].max()),
                   run_ids=" ".join(g["run_id"]))
        for m, _, _, (low, high) in METRICS:
            mean, lo, hi, _n, cut = bounded_ci(g[m].tolist(), low, high)
            row.update({f"{m}_mean": mean, f"{m}_ci95_lo": lo, f"{m}_ci95_hi": hi, f"{m}_ci95_cut": cut})
        stuck = [f"seed {s}: {w}" for s, w in zip(g["seed"], g["at_majority_rate"]) if w]
        row["at_majority_rate"] = " | ".join(stuck)
        rows.append(row)
    for _, r in table[table["status"] != "complete"].iterrows():
        row = {k: r[k] for k in KEYS + first}
        row.update(status=r["status"], state=r["state"], n_seeds=1, seeds=str(r["seed"]),
                   tasks_completed=r["tasks_completed"], n_tasks=r["n_tasks"], run_ids=r["run_id"],
                   at_majority_rate=f"seed {r['seed']}: {r['at_majority_rate']}" if r["at_majority_rate"] else "")
        for m, *_ in METRICS:
            row.update({f"{m}_mean": r[m], f"{m}_ci95_lo": float("nan"), f"{m}_ci95_hi": float("nan"),
                        f"{m}_ci95_cut": False})
        rows.append(row)
    cols = ["benchmark", "scenario"] + first + ["label", "status", "state", "n_seeds", "seeds", "tasks_completed",
                                                "n_tasks"] + \
        [f"{m}_{s}" for m, *_ in METRICS for s in ("mean", "ci95_lo", "ci95_hi", "ci95_cut")] + \
        ["at_majority_rate", "run_ids"]
    out = pd.DataFrame(rows, columns=cols)
    out["_unfinished"] = out["status"] != "complete"
    out = out.sort_values(["benchmark", "scenario", "_unfinished", "method", "lambda", "variant"], kind="stable")
    return out.drop(columns="_unfinished").reset_index(drop=True)


def reports_nll(table: pd.DataFrame) -> bool:
    """Whether any run of a ``run_table`` reports a held-out NLL (its objective's ``report_measures``: its
    ``nll_unit`` is set); a table without that column (made by hand): whether it carries an NLL rise."""
    if "nll_unit" in table:
        return bool((table["nll_unit"].fillna("") != "").any())
    return "nll_forgetting_max" in table and bool(table["nll_forgetting_max"].notna().any())


def forgetting_column(table: pd.DataFrame) -> str:
    """The forgetting a group of runs is judged by: the NLL rise for causal LMs, else accuracy forgetting."""
    return "nll_forgetting_max" if reports_nll(table) else "forgetting_max"


def kl_fit(table: pd.DataFrame) -> dict | None:
    """Least-squares line (and parabola) of forgetting on KL drift on the new task, over complete runs.

    ``slope_ci95`` is the slope's 95% t-interval (the regression's standard error, n - 2 degrees of
    freedom); ``configs`` the number of distinct experiments among the ``n`` runs (seeds of one
    experiment are not independent configurations).

    Forgetting is the max-based accuracy forgetting, or for causal LMs the max-based NLL rise
    (``column`` says which). ``quad`` holds the quadratic fit's coefficients (c0 + c1 x + c2 x^2)
    and R², given at least four runs (Shenfeld et al. 2025 fit forgetting against new-task KL).
    """
    y = forgetting_column(table)
    d = table[(table["status"] == "complete")][["kl_new_task", y]].dropna()
    out = least_squares(d["kl_new_task"].to_numpy(float), d[y].to_numpy(float))
    if out is None:
        return None
    return {**out, "column": y, "configs": int(table.loc[d.index, "label"].nunique()) if "label" in table else len(d)}


def least_squares(x: np.ndarray, y: np.ndarray) -> dict | None:
    """The least-squares line of ``y`` on ``x`` (slope, intercept, R², the slope's 95% t-interval with n − 2 degrees
    of freedom) and, given four points at three distinct x or more, the parabola (``quad``: c0 + c1 x + c2 x², R²);
    None below three points or two distinct x. The one place the reports and benchmarks/rl_razor.py fit."""
    if len(x) < 3 or len(np.unique(x)) < 2:
        return None
    fit = stats.linregress(x, y)
    half = float(stats.t.ppf(0.975, len(x) - 2) * fit.stderr)
    out = {"slope": float(fit.slope), "intercept": float(fit.intercept), "r2": float(fit.rvalue ** 2), "n": len(x),
           "slope_ci95": (float(fit.slope) - half, float(fit.slope) + half)}
    if len(x) >= 4 and len(np.unique(x)) >= 3:
        c2, c1, c0 = np.polyfit(x, y, 2)
        resid = y - (c0 + c1 * x + c2 * x * x)
        total = float(((y - y.mean()) ** 2).sum())
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
        text += f" [{f * lo:.{digits}f}, {f * hi:.{digits}f}]" + ("†" if r.get(f"{m}_ci95_cut", False) else "")
    return text


REFERENCE_COLUMNS = {"average_accuracy", "new_task_accuracy", "old_task_accuracy"}


def _reference_rows(refs: pd.DataFrame, shown: list, with_variant: bool) -> list[str]:
    """Table rows for the chance and majority-class predictors (accuracy columns only)."""
    if refs.empty:
        return []
    lines = []
    for col, name in (("chance_accuracy", "*reference: chance*"), ("majority_accuracy", "*reference: majority class*")):
        v = refs.sort_values("task")[col].to_numpy()
        values = {"average_accuracy": v.mean(), "new_task_accuracy": v[-1],
                  "old_task_accuracy": v[:-1].mean() if len(v) > 1 else float("nan")}
        cells = [name] + (["–"] if with_variant else []) + ["–"]
        cells += [f"{100 * values[m]:.1f}" if m in values and not math.isnan(values[m]) else "–" for m, *_ in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(summary: pd.DataFrame, table: pd.DataFrame, references: pd.DataFrame | None = None) -> str:
    references = references if references is not None else pd.DataFrame(columns=["benchmark", "scenario"])
    lines = [
        "# Summary of runs",
        "",
        "Each row pools the complete runs of one experiment over seeds. A method is named with its strength "
        "(λ, α, c: its main hyper-parameter; every part of a composed method keeps its own), a penalty at "
        "strength 0 is plain fine-tuning and is named naive, and a method without a strength (replay, joint) "
        "shows none. Cells give the mean, then in brackets the 95% confidence interval from the t distribution "
        "with n-1 degrees of freedom (mean ± t₀.₉₇₅,ₙ₋₁ · s/√n, s the sample standard deviation over seeds), "
        "cut to the range the quantity can take (accuracy 0-100, forgetting and transfers -100 to 100, KL and "
        "time ≥ 0); † marks an interval that was cut, whose coverage is then not the nominal 95%. One seed "
        "gives no interval. Accuracies, forgetting and transfers are in percentage points, measured after "
        "the last task.",
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
        "- reference rows: the same accuracies for a uniform guess among the outputs evaluated (chance) and for "
        "always predicting each task's most frequent test label (majority class)",
        "",
    ]
    if reports_nll(table):
        lines[-1:-1] = [
            "- causal LMs: accuracy is the answer accuracy of completion tasks (the choice of highest likelihood) "
            "and the next-token accuracy of language-modelling tasks; KL drift is per token; NLL rise, max-based: "
            "each old task's final held-out NLL per token minus its lowest before, averaged (nats); NLL rise since "
            "learned: final minus right after learning it; new-/old-task NLL: final NLL per token"]
    for (bench, scen), s in summary.groupby(["benchmark", "scenario"], sort=True):
        lines += [f"## {bench}, {scen}-incremental", ""]
        with_variant = bool((s["variant"].fillna("") != "").any())
        here = table[(table["benchmark"] == bench) & (table["scenario"] == scen)]
        lm = reports_nll(here)  # LM columns for runs whose objective reports NLL (report_measures)
        shown = [(m, h, pct) for m, h, pct, _ in METRICS if m not in LM_METRICS or lm]
        lm_units = here.loc[here["nll_unit"].fillna("") != "", "nll_unit"] if "nll_unit" in here else here.iloc[:0]
        unit = "byte" if len(lm_units) and (lm_units == "byte").all() else "token"
        head = ["method", "runs"] + [h.replace("nats/token", f"nats/{unit}") for _, h, _ in shown]
        if with_variant:
            head.insert(1, "variant")
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in s.iterrows():
            runs = (f"{r['n_seeds']} (seeds {r['seeds']})" if r["status"] == "complete" else
                    f"**unfinished**: {r['state']} (seed {r['seeds']}, run {r['run_ids']})")
            cells = [r["name"], runs]
            if with_variant:
                cells.insert(1, r["variant"] or "–")
            cells += [_cell(r, m, pct) for m, _, pct in shown]
            lines.append("| " + " | ".join(cells) + " |")
        refs = references[(references["benchmark"] == bench) & (references["scenario"] == scen)]
        lines += _reference_rows(refs, shown, with_variant)
        unfinished = s[s["status"] != "complete"]
        lines.append("")
        if len(refs):
            per_task = ", ".join(f"{r.task}: {100 * r.chance_accuracy:.1f} / {100 * r.majority_accuracy:.1f}"
                                 for r in refs.sort_values("task").itertuples())
            lines += [f"Chance / majority-class accuracy (%) of each task after the last task: {per_task}.", ""]
        stuck = s[s["at_majority_rate"].fillna("") != ""]
        if len(stuck):
            lines += ["**Warning: accuracy equal to the majority-class rate** (the model most likely predicts one "
                      "class for the whole task; A[t][k] is task k's accuracy after training task t):", ""]
            lines += [f"- {r['label']}: {r['at_majority_rate']}" for _, r in stuck.iterrows()]
            lines.append("")
        if len(unfinished):
            lines += [f"{len(unfinished)} unfinished run(s) are listed on their own rows, with their numbers over "
                      "the tasks they completed; they are not pooled into the means and not used in the "
                      "trade-off and KL figures (the forgetting curves show them as far as they got).", ""]
        fit = kl_fit(table[(table["benchmark"] == bench) & (table["scenario"] == scen)])
        if fit and fit["column"] == "nll_forgetting_max":
            quad = fit.get("quad")
            lines += [f"NLL rise (max-based) against KL drift on the new task over {fit['n']} complete runs: "
                      f"least-squares slope {fit['slope']:.3f} nats/{unit} per nat "
                      f"[{fit['slope_ci95'][0]:.3f}, {fit['slope_ci95'][1]:.3f}] (95% t-interval), R² = {fit['r2']:.3f}, "
                      f"{fit['configs']} configs"
                      + (f"; quadratic fit {quad['c0']:.3f} + {quad['c1']:.3f} x + {quad['c2']:.3f} x², "
                         f"R² = {quad['r2']:.3f}" if quad else "") + ".", ""]
        elif fit:
            quad = fit.get("quad")
            lines += [f"Forgetting (max-based) against KL drift on the new task over {fit['n']} complete runs: "
                      f"least-squares slope {100 * fit['slope']:.2f} points per nat, R² = {fit['r2']:.3f}"
                      + (f"; quadratic fit R² = {quad['r2']:.3f}" if quad else "") + ".", ""]
    return "\n".join(lines) + "\n"


def write_summary(table: pd.DataFrame, out: Path, references: pd.DataFrame | None = None) -> list[Path]:
    """``summary.csv`` (fractions, seconds) and ``summary.md`` (percentage points) in ``out``."""
    summary = summarize(table)
    csv, md = out / "summary.csv", out / "summary.md"
    atomic_write_text(csv, summary.to_csv(index=False))
    atomic_write_text(md, markdown(summary, table, references))
    return [csv, md]


__all__ = ["METRICS", "assign_experiments", "display_name", "kl_fit", "markdown", "reference_accuracies", "run_table",
           "summarize", "write_summary"]
