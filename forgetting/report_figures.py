"""The figures of a report, for one benchmark and scenario: each as PNG and SVG.

Sizes are fixed by the content (inches at ``DPI``), so a figure's pixel size is known in advance:
see each function's docstring.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from adjustText import adjust_text  # noqa: E402

from .metrics import (accuracy_matrix, bounded_ci, is_lm_run, mean_ci, old_task_curves, pareto_front,  # noqa: E402
                      task_boundaries)
from .report_runs import Run  # noqa: E402
from .report_summary import forgetting_column, kl_fit, reference_accuracies, summarize  # noqa: E402

DPI = 100
FORMATS = ("png", "svg")
SEQUENTIAL = ["Blues", "Oranges", "Greens", "Reds", "Purples", "Greys", "YlOrBr", "PuRd", "BuGn", "RdPu"]


class Collect(dict):
    """A destination that keeps the figures by name instead of writing them (``forgetting.plot.figures``)."""

    def mkdir(self, *args, **kwargs) -> None:
        pass


def save(fig, out: Path, name: str) -> list[Path]:
    if isinstance(out, Collect):
        out[name] = fig
        return []
    paths = []
    for fmt in FORMATS:
        p = out / f"{name}.{fmt}"
        fig.savefig(p, dpi=DPI, metadata={"Date": None} if fmt == "svg" else None)
        paths.append(p)
    plt.close(fig)
    return paths


def colors(table: pd.DataFrame) -> dict[str, tuple]:
    """A colour per experiment label: a hue per method (naive its own, grey), darker for larger λ."""
    out = {}
    hue = table["method"].where(~table["label"].str.startswith("naive"), "naive")
    methods = sorted(hue.unique(), key=lambda m: (m != "naive", m))
    for i, m in enumerate(methods):
        if m == "naive":
            labels = sorted(table.loc[hue == m, "label"].unique())
            out.update(zip(labels, sns.color_palette("Greys", len(labels) + 3)[3:]))
            continue
        labels = table[hue == m].sort_values(["lambda", "label"])["label"].unique()
        shades = sns.color_palette(SEQUENTIAL[i % len(SEQUENTIAL)], len(labels) + 2)[2:]
        out.update(zip(labels, shades))
    return out


def short_name(name: str, benchmark: str) -> str:
    """'split-digits[0/1]' -> '0/1'."""
    return name[len(benchmark) + 1 : -1] if name.startswith(benchmark + "[") and name.endswith("]") else name


def task_names(runs: list[Run]) -> list[str]:
    rows = max(runs, key=lambda r: r.n_tasks).rows
    names = rows.drop_duplicates("eval_task").sort_values("eval_task")
    return [f"{k}: {short_name(n, runs[0].benchmark)}" for k, n in zip(names["eval_task"], names["eval_task_name"])]


def t_band(x: pd.Series) -> tuple[float, float]:
    """seaborn errorbar: the 95% t-interval of the mean accuracy over seeds, cut to [0, 1] (as in the summary)."""
    _, lo, hi, _, _ = bounded_ci(x.tolist(), 0.0, 1.0)
    return lo, hi


def t_band_unbounded(x: pd.Series) -> tuple[float, float]:
    """seaborn errorbar: the 95% t-interval of the mean over seeds of a quantity without bounds (NLL)."""
    _, lo, hi, _ = mean_ci(x.tolist())
    return lo, hi


REFERENCE_STYLE = {"chance": dict(color="0.45", ls=(0, (1, 2)), lw=1.1),
                   "majority": dict(color="firebrick", ls=(0, (6, 2, 1, 2)), lw=1.0, alpha=0.8)}


def reference_curves(ref: Run, k: int) -> pd.DataFrame:
    """Chance and majority-class accuracy of task k at the evaluation points of ``ref`` (empty without them)."""
    if "majority_accuracy" not in ref.rows:
        return pd.DataFrame(columns=["finetune_step", "chance_accuracy", "majority_accuracy"])
    c = old_task_curves(ref.rows, ref.tasks_completed)
    return c[c["eval_task"] == k][["finetune_step", "chance_accuracy", "majority_accuracy"]]


def forgetting_curves(runs: list[Run], table: pd.DataFrame, where: str, out: Path, prefix: str,
                      value: str = "accuracy") -> list[Path]:
    """Accuracy (or, ``value="nll"``, a causal LM's held-out NLL per token) of each old task against the
    fine-tuning step; size 11 x (2.0 + 2.6 per old task) inches."""
    names = task_names(runs)
    n_old = max(r.n_tasks for r in runs) - 1
    if n_old < 1:
        return []
    label_of = dict(zip(table["run_id"], table["label"]))
    palette = colors(table)
    pts = []
    for r in runs:
        c = old_task_curves(r.rows, r.tasks_completed)
        if len(c):
            pts.append(c.assign(label=label_of[r.run_id], complete=r.complete, state=r.state(), run_id=r.run_id))
    fig, axes = plt.subplots(n_old, 1, figsize=(11, 2.0 + 2.6 * n_old), sharex=True, squeeze=False,
                             layout="constrained")
    axes = axes[:, 0]
    data = pd.concat(pts, ignore_index=True) if pts else None
    unfinished = {}
    ref = next((r for r in runs if r.complete), max(runs, key=lambda r: r.tasks_completed))
    drew_reference = False
    for k, ax in enumerate(axes):
        ax.set_title(f"task {names[k]}", loc="left", fontsize=10)
        if value == "accuracy":
            ax.set_ylim(-0.02, 1.14)
            ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel("test accuracy" if value == "accuracy" else "test NLL per token (nats)")
        ax.grid(alpha=0.3)
        rc = reference_curves(ref, k) if value == "accuracy" else pd.DataFrame()
        if len(rc):  # chance may change along the way (class-incremental: more outputs), so a step line
            ax.step(rc["finetune_step"], rc["chance_accuracy"], where="post", **REFERENCE_STYLE["chance"])
            ax.step(rc["finetune_step"], rc["majority_accuracy"], where="post", **REFERENCE_STYLE["majority"])
            drew_reference = True
        if data is None:
            continue
        d = data[data["eval_task"] == k]
        done = d[d["complete"]]
        if len(done):
            sns.lineplot(done, x="finetune_step", y=value, hue="label", palette=palette,
                         errorbar=t_band if value == "accuracy" else t_band_unbounded,
                         estimator="mean", legend=False, ax=ax)
        for (rid, label, state), u in d[~d["complete"]].groupby(["run_id", "label", "state"]):
            ax.plot(u["finetune_step"], u[value], ls="--", lw=1.2, color=palette[label])
            seed = next(r.seed for r in runs if r.run_id == rid)
            unfinished[f"{label}, seed {seed}: unfinished, {state}"] = Line2D([], [], ls="--", color=palette[label])
    bounds = task_boundaries(ref.rows, ref.tasks_completed)
    if len(bounds):
        b = (bounds - bounds.iloc[0]).to_dict()
        for t, step in b.items():
            for ax in axes:
                ax.axvline(step, color="0.4", ls=":", lw=1)
            if t + 1 < len(names) and t + 1 in b:
                for ax in axes:
                    ax.text((step + b[t + 1]) / 2, 1.08 if value == "accuracy" else 1.02, f"training {names[t + 1]}",
                            ha="center", va="center", fontsize=7, color="0.35",
                            transform=ax.get_xaxis_transform() if value != "accuracy" else ax.transData)
    axes[-1].set_xlabel("fine-tuning step (optimiser steps since the end of the base task; dotted lines: task ends)")
    handles = {}
    for label in sorted(table.loc[table["status"] == "complete", "label"].unique(), key=list(palette).index):
        n = int(((table["label"] == label) & (table["status"] == "complete")).sum())
        handles[f"{label}: mean of {n} seed{'s' * (n > 1)}"] = Line2D([], [], color=palette[label])
    handles.update(unfinished)
    if drew_reference:
        handles["chance: a uniform guess among the outputs evaluated"] = Line2D([], [], **REFERENCE_STYLE["chance"])
        handles["majority class: always the task's most frequent test label"] = Line2D([], [], **REFERENCE_STYLE["majority"])
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=2, fontsize=8,
               title="method and strength (band: 95% t-interval over seeds"
                     + (", cut to 0-1" if value == "accuracy" else "") + "; dashed: a run that did not finish)",
               title_fontsize=8)
    if value == "accuracy":
        fig.suptitle(f"Forgetting curves: accuracy of each old task while fine-tuning on the next ones\n{where}")
        return save(fig, out, f"{prefix}forgetting_curves")
    fig.suptitle(f"Forgetting curves: held-out NLL per token of each old task while fine-tuning on the next ones "
                 f"(up: forgetting)\n{where}")
    return save(fig, out, f"{prefix}nll_curves")


def accuracy_heatmaps(runs: list[Run], table: pd.DataFrame, where: str, out: Path, prefix: str) -> list[Path]:
    """A[t][k] per experiment, mean over complete seeds; size (0.8 + 4.6 c) x (1.0 + 4.2 r) inches for c x r panels."""
    names = task_names(runs)
    K = len(names)
    label_of = dict(zip(table["run_id"], table["label"]))
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(label_of[r.run_id], []).append(r)
    palette = list(colors(table))
    order = sorted(groups, key=palette.index)
    n = len(order)
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(0.8 + 4.6 * ncols, 1.0 + 4.2 * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, label in zip(axes.flat, order):
        done = [r for r in groups[label] if r.complete]
        use = done or groups[label]
        mats = []
        for r in use:
            A = accuracy_matrix(r.rows, r.tasks_completed)
            M = np.full((K, K), np.nan)
            M[: A.shape[0], : A.shape[1]] = A
            mats.append(M)
        with warnings.catch_warnings():  # a cell no run reached stays NaN (blank)
            warnings.simplefilter("ignore", RuntimeWarning)
            M = np.nanmean(np.stack(mats), axis=0) if mats else np.full((K, K), np.nan)
        sns.heatmap(100 * M, ax=ax, vmin=0, vmax=100, cmap="viridis", annot=True, fmt=".0f", cbar=False,
                    mask=np.isnan(M), xticklabels=names, yticklabels=names, annot_kws={"fontsize": 8}, square=True)
        what = (f"mean of {len(done)} seed{'s' * (len(done) > 1)}" if done else
                "unfinished: " + "; ".join(f"seed {r.seed} {r.state()}" for r in use))
        ax.set_title(f"{label}\n{what}", fontsize=9)
        ax.set_xlabel("evaluated on task k")
        ax.set_ylabel("after training task t")
        ax.tick_params(labelsize=8)
    fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, 100), "viridis"), ax=axes, shrink=0.6,
                 label="test accuracy (%)")
    fig.suptitle(f"Accuracy matrix A[t][k] (%): accuracy on task k after training task t\n{where}")
    return save(fig, out, f"{prefix}accuracy_matrix")


def tradeoff(table: pd.DataFrame, where: str, out: Path, prefix: str, references: pd.DataFrame | None = None) -> list[Path]:
    """Final old-task against new-task accuracy per experiment, Pareto front marked; size 9 x 6.5 inches.

    Each point is labelled with its experiment's name; labels are moved apart (adjustText) so that
    points that coincide keep readable names, with a thin line to their point.
    """
    s = summarize(table)
    s = s[s["status"] == "complete"].dropna(subset=["new_task_accuracy_mean", "old_task_accuracy_mean"])
    palette = colors(table)
    fig, ax = plt.subplots(figsize=(9, 6.5), layout="constrained")
    x, y = 100 * s["new_task_accuracy_mean"].to_numpy(), 100 * s["old_task_accuracy_mean"].to_numpy()

    def bars(m):  # asymmetric: the intervals are cut to [0, 100]
        lo = (100 * (s[f"{m}_mean"] - s[f"{m}_ci95_lo"])).fillna(0).to_numpy()
        hi = (100 * (s[f"{m}_ci95_hi"] - s[f"{m}_mean"])).fillna(0).to_numpy()
        return np.vstack([lo, hi])

    xerr, yerr = bars("new_task_accuracy"), bars("old_task_accuracy")
    texts = []
    for i, (_, r) in enumerate(s.iterrows()):
        ax.errorbar(x[i], y[i], xerr=xerr[:, i : i + 1], yerr=yerr[:, i : i + 1], fmt="o",
                    ms=7, color=palette[r["label"]], ecolor=palette[r["label"]], elinewidth=1, capsize=2,
                    label=f"{r['label']} ({r['n_seeds']} seeds)")
        texts.append(ax.text(x[i], y[i], r["label"], fontsize=8, color="0.15"))
    front = pareto_front(x, y)
    if len(front):
        ax.plot(x[front], y[front], "-", color="0.2", lw=1, zorder=0)
        ax.scatter(x[front], y[front], s=180, facecolors="none", edgecolors="0.1", lw=1.5,
                   label="Pareto front (no other setting better on both)")
    if references is not None and len(references):
        v = references.sort_values("task")
        for col, what in (("chance_accuracy", "chance"), ("majority_accuracy", "majority class")):
            style = REFERENCE_STYLE["chance" if what == "chance" else "majority"]
            ax.axvline(100 * v[col].iloc[-1], **style)
            if len(v) > 1:
                ax.axhline(100 * v[col].iloc[:-1].mean(), **style)
            ax.plot([], [], **style, label=f"{what} (new task: vertical, old tasks: horizontal)")
    ax.set_xlabel("accuracy on the new (last) task after fine-tuning (%)")
    ax.set_ylabel("mean accuracy on the old tasks after fine-tuning (%)")
    ax.grid(alpha=0.3)
    if len(s):
        ax.legend(fontsize=8, loc="best", title="mean over seeds, bars: 95% t-interval cut to 0-100",
                  title_fontsize=8)
        ax.set_xlim(-5, 105)
        ax.set_ylim(-5, 105)
        adjust_text(texts, ax=ax, expand=(1.3, 1.6), arrowprops=dict(arrowstyle="-", color="0.5", lw=0.6))
    else:
        ax.text(0.5, 0.5, "no complete runs yet", transform=ax.transAxes, ha="center", color="0.4")
    ax.set_title(f"Stability–plasticity trade-off\n{where}")
    return save(fig, out, f"{prefix}tradeoff")


def kl_vs_forgetting(table: pd.DataFrame, where: str, out: Path, prefix: str) -> list[Path]:
    """Forgetting against KL drift from the base model, one point per complete run; size 13 x 5.5 inches."""
    d = table[table["status"] == "complete"]
    y = forgetting_column(table)
    scale = 100 if y == "forgetting_max" else 1  # accuracy points, or nats per token
    palette = colors(table)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True, layout="constrained")
    panels = [("kl_new_task", "on the new (last) task's test inputs"), ("kl_old_tasks", "on the old tasks' test inputs")]
    for ax, (col, on) in zip(axes, panels):
        for label, g in d.groupby("label", sort=False):
            ax.scatter(g[col], scale * g[y], color=palette[label], label=label, s=36)
        fit = kl_fit(d.assign(kl_new_task=d[col]))
        if fit:
            xs = np.linspace(d[col].min(), d[col].max(), 50)
            ax.plot(xs, scale * (fit["intercept"] + fit["slope"] * xs), color="0.2", lw=1.2,
                    label=f"least-squares line, R² = {fit['r2']:.2f} (n = {fit['n']} runs)")
            if "quad" in fit:
                q = fit["quad"]
                ax.plot(xs, scale * (q["c0"] + q["c1"] * xs + q["c2"] * xs * xs), color="0.2", lw=1.2, ls="--",
                        label=f"least-squares parabola, R² = {q['r2']:.2f}")
        else:
            ax.text(0.5, 0.5, "too few runs for a fitted line", transform=ax.transAxes, ha="center", color="0.4")
        ax.set_xlabel(f"KL(p_base ‖ p_final) {on} (nats)")
        ax.grid(alpha=0.3)
        if len(d):
            ax.legend(fontsize=8)
    axes[0].set_ylabel("average forgetting, max-based (Chaudhry et al. 2018, points)" if scale == 100 else
                       "NLL rise on old tasks, max-based (nats per token)")
    fig.suptitle(f"Does drift from the base model predict forgetting? One point per run\n{where}")
    return save(fig, out, f"{prefix}kl_vs_forgetting")


def figure_set(runs: list[Run], table: pd.DataFrame, out: Path, prefix: str = "") -> list[Path]:
    """Every figure for the runs of one benchmark and scenario."""
    where = f"{runs[0].benchmark}, {runs[0].scenario}-incremental"
    runs = [r for r in runs if len(r.rows)]  # a run that recorded nothing yet is only in the summary
    out.mkdir(parents=True, exist_ok=True)
    if not runs:
        return []
    table = table[table["run_id"].isin({r.run_id for r in runs})]
    nll = [r for r in runs if is_lm_run(r.rows)]
    return (forgetting_curves(runs, table, where, out, prefix) + accuracy_heatmaps(runs, table, where, out, prefix)
            + (forgetting_curves(nll, table[table["run_id"].isin({r.run_id for r in nll})], where, out, prefix,
                                 value="nll") if nll else [])
            + tradeoff(table, where, out, prefix, reference_accuracies(runs))
            + kl_vs_forgetting(table, where, out, prefix))
