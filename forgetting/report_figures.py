"""The figures of a report, for one benchmark and scenario, sized for a paper.

Each figure is a column (3.5 in) or a page (7.16 in) wide, its height set by what it holds; the
``paper`` style sets type at 7-9 pt, so that the figure placed at 100 % reads like the text around
it. Accuracy-like quantities are in % in every figure, and axes stop where the quantity does
(accuracy 0-100 %, forgetting ±100 points, KL and NLL >= 0) plus a small margin for markers.
Written as PDF (TrueType fonts, which journals ask for), SVG and 300-dpi PNG, with no dates
inside, so that the same results give the same files.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from adjustText import adjust_text  # noqa: E402

from .metrics import (accuracy_matrix, bounded_ci, mean_ci, old_task_curves, pareto_front,  # noqa: E402
                      task_boundaries)
from .report_look import FORMATS, Look  # noqa: E402
from .report_runs import Run  # noqa: E402
from .report_summary import forgetting_column, kl_fit, reference_accuracies, summarize  # noqa: E402

DPI = 300
MARGIN = 3.0  # percentage points beyond 0 and 100 % on accuracy axes, so a marker on the bound is drawn whole
BAND_ALPHA = 0.12  # light enough that several methods' bands overlap and stay readable
SEQUENTIAL = ["Blues", "Oranges", "Greens", "Reds", "Purples", "PuRd", "YlOrBr", "BuGn", "RdPu", "YlGnBu"]  # no Greys: naive
# type for a figure placed at 100 %: 7-9 pt, as the text of a journal page
PAPER_TYPE = {"font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
              "legend.fontsize": 7, "legend.title_fontsize": 7, "figure.titlesize": 9, "figure.labelsize": 8}
SAVE_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "forgetting"}  # TrueType; fixed SVG ids
METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": None}  # no dates: same input, same bytes


def style_rc(style: str) -> dict:
    """rcParams of a seaborn context (``paper``: the sizes above) on the whitegrid style."""
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context(style)}
    if style == "paper":
        rc.update(PAPER_TYPE)
    return {**rc, **SAVE_RC, "axes.titlelocation": "left", "legend.frameon": False}


class Collect(dict):
    """A destination that keeps the figures by name instead of writing them (``forgetting.plot.figures``)."""

    def mkdir(self, *args, **kwargs) -> None:
        pass


def save(fig, out: Path, name: str, look: Look | None = None, formats: tuple[str, ...] | None = None) -> list[Path]:
    """Write ``fig`` as ``out/name.<format>`` for each of ``look.formats`` at ``DPI``, then close it.

    Drawing reads rcParams too (layout, tick choice), so the files are written in the figure's own
    style: that of ``look``, else the one it was made with (``forgetting.plot.figures``' figures keep
    theirs), so that a figure saved later gives the report's bytes whatever the caller's settings.
    """
    look = look or getattr(fig, "forgetting_look", Look())
    if isinstance(out, Collect):
        fig.forgetting_look = look
        out[name] = fig
        return []
    paths = []
    with plt.rc_context(style_rc(look.style)):
        for fmt in formats or look.formats:
            p = out / f"{name}.{fmt}"
            fig.savefig(p, dpi=DPI, metadata=METADATA[fmt])
            paths.append(p)
    plt.close(fig)
    return paths


def points(key: str) -> float:
    """A font size of the current style in points."""
    return FontProperties(size=plt.rcParams[key]).get_size_in_points()


def line_in(key: str, n: int = 1) -> float:
    """Height in inches of ``n`` lines of text at the font size ``key``."""
    return n * 1.35 * points(key) / 72


def wrap(text: str, inches: float, key: str) -> str:
    """``text`` broken into lines that fit ``inches`` at the font size ``key`` (each given line kept apart)."""
    chars = max(12, int(inches * 72 / (0.56 * points(key))))
    return "\n".join(textwrap.fill(part, chars) for part in text.split("\n"))


def n_lines(text: str) -> int:
    return text.count("\n") + 1 if text else 0


def legend_columns(look: Look) -> int:
    """Two legend columns on a page width with paper-sized type, else one (so that no entry is cut)."""
    return 1 if look.width == "column" or points("legend.fontsize") > 9 else 2


def nll_unit(table: pd.DataFrame) -> str:
    """``byte`` where every run that reports an NLL has it per byte (the byte-level tokenizer of ``--model
    gpt2``), else ``token``."""
    lm = table[table["nll_unit"].fillna("") != ""] if "nll_unit" in table else table.iloc[:0]
    return "byte" if len(lm) and (lm["nll_unit"] == "byte").all() else "token"


def clip_limits(ax, axis: str, low: float | None = None, high: float | None = None, margin: float = 0.03) -> None:
    """Keep the autoscaled limits of ``axis`` within [low, high], give or take ``margin`` of the span."""
    get, put = (ax.get_xlim, ax.set_xlim) if axis == "x" else (ax.get_ylim, ax.set_ylim)
    lo, hi = get()
    pad = margin * (hi - lo)
    put(lo if low is None else max(lo, low - pad), hi if high is None else min(hi, high + pad))


# Every method has one hue family and one marker, fixed by its name (not by which methods a report
# happens to hold), so that a method looks the same in every figure of every report; unknown methods
# (a user's own) get theirs from a stable hash of the name.
FAMILIES = {"kl": "Blues", "rdrop": "Oranges", "kl+rdrop": "Purples", "ewc": "Greens", "ewc-online": "BuGn",
            "si": "YlOrBr", "mas": "PuRd", "l2sp": "RdPu", "replay": "Reds", "replay+kl": "YlGnBu",
            "der": "Oranges", "joint": "Purples"}
MARKERS = {"naive": "o", "kl": "s", "rdrop": "D", "kl+rdrop": "P", "ewc": "^", "ewc-online": "v", "si": "<",
           "mas": ">", "l2sp": "h", "replay": "X", "replay+kl": "*", "der": "d", "joint": "p"}
SPARE_MARKERS = "o s D ^ v < > p h X * d P H 8".split()
SHADES = 9  # shades of a family: λ picks one (half a decade a step, λ = 1 in the middle), the palest two unused


def _stable(name: str, n: int) -> int:
    import zlib

    return zlib.crc32(name.encode("utf-8")) % n


def method_key(table: pd.DataFrame) -> pd.Series:
    """Which method a row's colour and marker follow: its method, ``naive`` for a penalty at strength 0."""
    return table["method"].where(~table["label"].str.startswith("naive"), "naive")


def family(method: str) -> str:
    return "Greys" if method == "naive" else FAMILIES.get(method, SEQUENTIAL[_stable(method, len(SEQUENTIAL))])


def marker(method: str) -> str:
    return MARKERS.get(method, SPARE_MARKERS[_stable(method, len(SPARE_MARKERS))])


def default_strength(method: str) -> float:
    """The default of the method's strength option (EWC's 1e5, KL's 1): the middle shade of its family.
    Only methods this installation knows are looked up: a name read from a results file is never imported."""
    from .registry import known_method_classes

    classes = known_method_classes(method) or []
    option = next((o for c in classes if c.strength_option for o in c.options if o.name == c.strength_option), None)
    try:
        value = float(option.default) if option is not None else 1.0
    except (TypeError, ValueError):
        return 1.0
    return value if value > 0 else 1.0


def _shade(lam: float, method: str) -> int:
    if lam is None or not np.isfinite(lam) or lam <= 0:
        return 6
    return int(min(SHADES - 1, max(2, 6 + round(2 * math.log10(lam / default_strength(method))))))


def colors(table: pd.DataFrame) -> dict[str, tuple]:
    """A colour per experiment label, in drawing order (method, then λ): the method's hue family (naive
    grey), darker for larger λ, the same for the same method and λ in every report. Labels that would
    share a colour within one table (variants at one λ) are moved to the nearest free shade, in label order."""
    info = {}
    for label, m, lam in zip(table["label"], method_key(table), table["lambda"]):
        info.setdefault(label, (m, float(lam) if pd.notna(lam) else float("nan")))
    order = sorted(info, key=lambda lab: (info[lab][0] != "naive", info[lab][0],
                                          -1.0 if math.isnan(info[lab][1]) else info[lab][1], lab))
    out: dict[str, tuple] = {}
    taken: set[tuple[str, int]] = set()
    for label in order:
        m, lam = info[label]
        base = (6 if label == "naive" else 4) if m == "naive" else _shade(lam, m)
        shade, step = base, 0
        while (m, shade) in taken and step < 2 * SHADES:  # a variant at the same λ: the nearest free shade
            step += 1
            shade = min(SHADES - 1, max(2, base + (step + 1) // 2 * (1 if step % 2 else -1)))
        taken.add((m, shade))
        out[label] = tuple(sns.color_palette(family(m), SHADES)[shade])
    return out


def markers(table: pd.DataFrame) -> dict[str, str]:
    """A marker per experiment label: its method's, the same in every report."""
    return {lab: marker(m) for lab, m in zip(table["label"], method_key(table))}


def label_order(table: pd.DataFrame, look: Look) -> list[str]:
    """The experiments drawn, in the order asked for (else by colour: method, then strength)."""
    present = set(table["label"])
    if look.labels is not None:
        return [label for label in look.labels if label in present]
    return [label for label in colors(table) if label in present]


def short_name(name: str, benchmark: str) -> str:
    """'split-digits[0/1]' -> '0/1'."""
    return name[len(benchmark) + 1 : -1] if name.startswith(benchmark + "[") and name.endswith("]") else name


def task_names(runs: list[Run]) -> list[str]:
    rows = max(runs, key=lambda r: r.n_tasks).rows
    names = rows.drop_duplicates("eval_task").sort_values("eval_task")
    return [f"{k}: {short_name(n, runs[0].benchmark)}" for k, n in zip(names["eval_task"], names["eval_task_name"])]


def t_band(x: pd.Series) -> tuple[float, float]:
    """seaborn errorbar: the 95% t-interval of the mean accuracy (%) over seeds, cut to [0, 100] (as in the summary)."""
    _, lo, hi, _, _ = bounded_ci(x.tolist(), 0.0, 100.0)
    return lo, hi


def t_band_unbounded(x: pd.Series) -> tuple[float, float]:
    """seaborn errorbar: the 95% t-interval of the mean over seeds of a quantity without bounds (NLL)."""
    _, lo, hi, _ = mean_ci(x.tolist())
    return lo, hi


REFERENCE_STYLE = {"chance": dict(color="0.45", ls=(0, (1, 2)), lw=1.0),
                   "majority": dict(color="firebrick", ls=(0, (6, 2, 1, 2)), lw=0.9, alpha=0.8)}
BOUNDARY_STYLE = dict(color="0.55", ls=":", lw=0.8)


def reference_curves(ref: Run, k: int) -> pd.DataFrame:
    """Chance and majority-class accuracy of task k at the evaluation points of ``ref`` (empty without them)."""
    if "majority_accuracy" not in ref.rows:
        return pd.DataFrame(columns=["finetune_step", "chance_accuracy", "majority_accuracy"])
    c = old_task_curves(ref.rows, ref.tasks_completed)
    return c[c["eval_task"] == k][["finetune_step", "chance_accuracy", "majority_accuracy"]]


def forgetting_curves(runs: list[Run], table: pd.DataFrame, where: str, out: Path, prefix: str, look: Look = Look(),
                      value: str = "accuracy") -> list[Path]:
    """Accuracy in % (or, ``value="nll"``, a causal LM's held-out NLL per token) of each old task against the
    fine-tuning step: a panel per old task (``look.tasks``), in one column (column width) or two (page width).

    Each experiment is the mean over its complete seeds with a light 95% t-interval band (``look.bands``),
    an unfinished run a dashed line of its own; dotted lines mark task ends, and the top panels name the
    task being trained between them.
    """
    names = task_names(runs)
    n_old = max(r.n_tasks for r in runs) - 1
    measured = list(range(n_old + 1, len(names)))  # lm-eval's and evaluation-only tasks: never learned
    panels = [k for k in (list(range(n_old)) + measured if look.tasks is None else look.tasks)
              if k < n_old or k in measured]
    if not panels:
        return []
    pct = value == "accuracy"
    scale = 100.0 if pct else 1.0
    label_of = dict(zip(table["run_id"], table["label"]))
    palette, shapes = colors(table), markers(table)
    order = label_order(table, look)
    pts = []
    for r in runs:
        c = old_task_curves(r.rows, r.tasks_completed)
        if len(c):
            pts.append(c.assign(y=scale * c[value], label=label_of[r.run_id], complete=r.complete, state=r.state(),
                                run_id=r.run_id))
    data = pd.concat(pts, ignore_index=True) if pts else None
    ref = next((r for r in runs if r.complete), max(runs, key=lambda r: r.tasks_completed))
    reference = pct and "majority_accuracy" in ref.rows

    # a 2-seed t-band (t = 12.7) that covers the whole 0-100 % says nothing: those seeds are drawn as points
    smeared = set()
    if data is not None and pct and look.bands:
        for (k, label), d in data[data["complete"]].groupby(["eval_task", "label"]):
            if d["run_id"].nunique() == 2 and any(t_band(g) == (0.0, 100.0) for _, g in d.groupby("finetune_step")["y"]):
                smeared.add((k, label))

    # the legend first: its size sets the figure's height
    handles: dict[str, Line2D] = {}
    for label in order:
        n = int(((table["label"] == label) & (table["status"] == "complete")).sum())
        if n:
            handles[f"{label} ({n} seed{'s' * (n > 1)})"] = Line2D([], [], color=palette[label])
    if data is not None:
        for (rid, label, state), _ in data[~data["complete"] & data["label"].isin(order)].groupby(
                ["run_id", "label", "state"]):
            seed = next(r.seed for r in runs if r.run_id == rid)
            handles[f"{label}, seed {seed}: {state}"] = Line2D([], [], ls="--", color=palette[label])
    if reference:
        handles["chance (uniform guess)"] = Line2D([], [], **REFERENCE_STYLE["chance"])
        handles["majority class"] = Line2D([], [], **REFERENCE_STYLE["majority"])
    handles["end of a task (on top: the task then trained)"] = Line2D([], [], **BOUNDARY_STYLE)
    W = look.inches
    ncols = 1 if look.width == "column" or len(panels) == 1 else 2
    nrows = math.ceil(len(panels) / ncols)
    legend_cols = legend_columns(look)
    title = wrap(("Accuracy of each old task while fine-tuning on the next ones" if pct else
                  f"Held-out NLL per {nll_unit(table)} of each old task while fine-tuning on the next ones "
                  "(up: forgetting)")
                 + f"\n{where}", W, "figure.titlesize") if look.titles else ""
    unfinished = data is not None and bool((~data["complete"] & data["label"].isin(order)).any())
    legend_title = wrap("mean over seeds" + ("; band: 95% t-interval" + (", cut to 0-100 %" if pct else "")
                                             if look.bands else "")
                        + ("; dots: each of 2 seeds, where their band would cover 0-100 %" if smeared else "")
                        + ("; dashed: unfinished run" if unfinished else ""),
                        W, "legend.title_fontsize")
    panel_h = max(0.9, min(1.45, 6.0 / nrows)) * max(1.0, points("axes.labelsize") / 8)
    height = (line_in("figure.titlesize", n_lines(title)) + 0.1 + nrows * panel_h + line_in("axes.labelsize") + 0.15
              + line_in("legend.title_fontsize", n_lines(legend_title))
              + line_in("legend.fontsize", math.ceil(len(handles) / legend_cols)) + 0.15)
    # each panel spans only the steps where its task exists (from the end of its training), so no shared x axis
    fig, axes = plt.subplots(nrows, ncols, figsize=(W, height), squeeze=False, layout="constrained")
    for ax in axes.flat[len(panels):]:  # an odd panel count on two columns: the one above shows the steps
        ax.axis("off")
        axes[nrows - 2, ncols - 1].xaxis.set_tick_params(labelbottom=True)
        axes[nrows - 2, ncols - 1].set_xlabel("fine-tuning step")
    drawn = list(axes.flat[: len(panels)])
    bounds = task_boundaries(ref.rows, ref.tasks_completed)
    b = (bounds - bounds.iloc[0]).to_dict() if len(bounds) else {}
    for k, ax in zip(panels, drawn):
        ax.set_title(f"task {names[k]}")
        ax.set_ylabel("accuracy (%)" if pct else f"NLL (nats per {nll_unit(table)})")
        for step in b.values():
            ax.axvline(step, **BOUNDARY_STYLE)
        rc = reference_curves(ref, k) if reference else pd.DataFrame()
        if len(rc):  # chance may change along the way (class-incremental: more outputs), so a step line
            ax.step(rc["finetune_step"], 100 * rc["chance_accuracy"], where="post", label="chance",
                    **REFERENCE_STYLE["chance"])
            ax.step(rc["finetune_step"], 100 * rc["majority_accuracy"], where="post", label="majority class",
                    **REFERENCE_STYLE["majority"])
        d = data[(data["eval_task"] == k) & data["label"].isin(order)] if data is not None else pd.DataFrame()
        for label in order:
            done = d[d["complete"] & (d["label"] == label)] if len(d) else d
            if len(done):
                lines, bands = len(ax.lines), len(ax.collections)
                smear = (k, label) in smeared
                sns.lineplot(done, x="finetune_step", y="y", color=palette[label], estimator="mean", legend=False,
                             errorbar=(t_band if pct else t_band_unbounded) if look.bands and not smear else None,
                             err_kws={"alpha": BAND_ALPHA, "linewidth": 0}, ax=ax)
                for line in ax.lines[lines:]:
                    line.set_label(label)
                for band in ax.collections[bands:]:
                    band.set_label(f"band: {label}")
                if smear:
                    ax.scatter(done["finetune_step"], done["y"], s=6, color=palette[label], marker=shapes[label],
                               linewidths=0, zorder=3, label=f"seeds: {label}")
        if len(d):
            for (rid, label), u in d[~d["complete"]].groupby(["run_id", "label"]):
                ax.plot(u["finetune_step"], u["y"], ls="--", lw=0.9, color=palette[label], label=f"{label} ({rid})")
        if pct:
            ax.set_ylim(-MARGIN, 100 + MARGIN)
            ax.set_yticks(np.linspace(0, 100, 6))
        else:
            clip_limits(ax, "y", low=0.0)
    last = max([*b.values(), *(data["finetune_step"].tolist() if data is not None else [])], default=0)
    for k, ax in zip(panels, drawn):
        first = b.get(k, 0) if k < n_old else 0  # a task measured but never learned: from the base task's end
        ax.set_xlim(first, max(last, first + 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
        ax.set_xlabel("fine-tuning step")  # every panel: its own steps (seaborn would write the column's name)
    for ax in axes[-1]:
        if ax.axison:
            ax.set_xlabel("fine-tuning step")
    steps = sorted(b.items())
    for ax in axes[0]:  # which task trains between two task ends, named above the top panels
        if not ax.axison or len(steps) < 2:
            continue
        lo, hi = ax.get_xlim()
        mids, labels = [], []
        for (t, start), (_, end) in zip(steps, steps[1:]):
            if t + 1 < len(names):
                mids.append((start + end) / 2)
                room = (end - start) / (hi - lo) * W / ncols * 72 / (0.6 * points("xtick.labelsize"))  # characters
                labels.append(next(text for text in (f"training {names[t + 1]}", names[t + 1], str(t + 1))
                                   if len(text) + 2 <= room or text == str(t + 1)))
        top = ax.secondary_xaxis("top")
        top.set_xticks(mids, labels=labels)
        top.tick_params(length=0, pad=1, labelcolor="0.35")
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=legend_cols,
               title=legend_title)
    if title:
        fig.suptitle(title)
    return save(fig, out, f"{prefix}{'forgetting' if pct else 'nll'}_curves", look)


def accuracy_heatmaps(runs: list[Run], table: pd.DataFrame, where: str, out: Path, prefix: str,
                      look: Look = Look()) -> list[Path]:
    """A[t][k] in % per experiment, mean over complete seeds: a square panel each, two (column width) or
    four (page width) to a row, numbers written in the cells where they fit (mean and, over 2 or more seeds,
    the seeds' standard deviation below it)."""
    names = task_names(runs)
    K = len(names)  # columns: every task evaluated (lm-eval's and evaluation-only tasks after the learned ones)
    T = max(r.n_tasks for r in runs) or K  # rows: the tasks learned
    label_of = dict(zip(table["run_id"], table["label"]))
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(label_of[r.run_id], []).append(r)
    order = [label for label in label_order(table, look) if label in groups]
    n = len(order)
    if not n:
        return []
    W = look.inches
    per_row = 2 if look.width == "column" else 4
    ncols = min(n, max(per_row, math.ceil(n / (4 if look.width == "column" else 3))))
    nrows = math.ceil(n / ncols)
    panel = (W - 0.5 - 0.6) / ncols  # less the y label and ticks, and the colour bar
    title = wrap(f"Accuracy matrix A[t][k] (%): accuracy on task k after training task t\n{where}", W,
                 "figure.titlesize") if look.titles else ""
    panel_titles = {}
    for label in order:
        done = [r for r in groups[label] if r.complete]
        what = (f"{len(done)} seed{'s' * (len(done) > 1)}" + (": mean ± sd" if len(done) > 1 else "") if done else
                "unfinished: " + "; ".join(f"seed {r.seed} {r.state()}" for r in groups[label]))
        panel_titles[label] = wrap(f"{label}\n{what}", panel, "axes.titlesize")
    title_lines = max(map(n_lines, panel_titles.values()))
    height = (line_in("figure.titlesize", n_lines(title)) + 0.1 + line_in("figure.labelsize") + 0.1
              + nrows * (0.9 * panel + line_in("axes.titlesize", title_lines) + line_in("xtick.labelsize") + 0.1))
    fig, axes = plt.subplots(nrows, ncols, figsize=(W, height), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    annotate = panel / K * 72 >= 2.2 * points("legend.fontsize")  # a cell holds "100"
    for ax, label in zip(axes.flat, order):
        done = [r for r in groups[label] if r.complete]
        use = done or groups[label]
        mats = []
        for r in use:
            A = accuracy_matrix(r.rows, r.tasks_completed)
            M = np.full((T, K), np.nan)
            M[: A.shape[0], : A.shape[1]] = A[:T]
            mats.append(M)
        with warnings.catch_warnings():  # a cell no run reached stays NaN (blank)
            warnings.simplefilter("ignore", RuntimeWarning)
            M = np.nanmean(np.stack(mats), axis=0) if mats else np.full((T, K), np.nan)
            S = np.nanstd(np.stack(mats), axis=0, ddof=1) if len(mats) >= 2 else None  # the spread over seeds
        cells = np.array([[f"{100 * m:.0f}" + (f"\n±{100 * S[t, k]:.0f}" if S is not None and np.isfinite(S[t, k])
                                                else "") if np.isfinite(m) else "" for k, m in enumerate(row)]
                          for t, row in enumerate(M)])
        sns.heatmap(100 * M, ax=ax, vmin=0, vmax=100, cmap="viridis", annot=cells if annotate else False, fmt="",
                    cbar=False,
                    mask=np.isnan(M), xticklabels=list(range(K)), yticklabels=list(range(T)), square=True,
                    annot_kws={"fontsize": points("legend.fontsize")})
        ax.set_title(panel_titles[label])
        ax.set(xlabel="", ylabel="")
        ax.tick_params(length=0, rotation=0)
        ax.grid(False)
    fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, 100), "viridis"), ax=axes, shrink=0.8,
                 label="accuracy (%)")
    fig.supxlabel("evaluated on task k")
    fig.supylabel("after training task t")
    if title:
        fig.suptitle(title)
    return save(fig, out, f"{prefix}accuracy_matrix", look)


def tradeoff(table: pd.DataFrame, where: str, out: Path, prefix: str, references: pd.DataFrame | None = None,
             look: Look = Look()) -> list[Path]:
    """Final old-task against new-task accuracy (%) per experiment, Pareto front marked, legend below.

    Each point is labelled with its experiment's name; labels are moved apart (adjustText) so that
    points that coincide keep readable names, with a thin line to their point. Both axes run from a
    ten below the lowest point, interval or reference line to 100 %, plus ``MARGIN``.
    """
    s = summarize(table)
    s = s[(s["status"] == "complete") & s["label"].isin(label_order(table, look))]
    s = s.dropna(subset=["new_task_accuracy_mean", "old_task_accuracy_mean"])
    s = s.set_index("label").loc[[label for label in label_order(table, look) if label in set(s["label"])]]
    s = s.reset_index()
    palette, shapes = colors(table), markers(table)
    x, y = 100 * s["new_task_accuracy_mean"].to_numpy(), 100 * s["old_task_accuracy_mean"].to_numpy()

    def bars(m):  # asymmetric: the intervals are cut to [0, 100]
        lo = (100 * (s[f"{m}_mean"] - s[f"{m}_ci95_lo"])).fillna(0).to_numpy()
        hi = (100 * (s[f"{m}_ci95_hi"] - s[f"{m}_mean"])).fillna(0).to_numpy()
        return np.vstack([lo, hi])

    xerr, yerr = bars("new_task_accuracy"), bars("old_task_accuracy")
    entries = len(s) + 1 + 2 * (references is not None and len(references) > 0)
    W = look.inches
    legend_cols = legend_columns(look)
    title = wrap(f"Stability–plasticity trade-off\n{where}", W, "axes.titlesize") if look.titles else ""
    legend_title = wrap("mean over seeds; bars: 95% t-interval, cut to 0-100 %", W, "legend.title_fontsize")
    axes_h = (2.7 if look.width == "column" else 3.6) * max(1.0, points("axes.labelsize") / 8)
    height = (axes_h + line_in("axes.titlesize", n_lines(title)) + line_in("legend.title_fontsize", n_lines(legend_title))
              + line_in("legend.fontsize", math.ceil(entries / legend_cols)) + 0.2)
    fig, ax = plt.subplots(figsize=(W, height), layout="constrained")
    ms = plt.rcParams["lines.markersize"]
    texts, handles = [], {}
    for i, (_, r) in enumerate(s.iterrows()):
        handles[f"{r['label']} ({r['n_seeds']} seed{'s' * (r['n_seeds'] > 1)})"] = ax.errorbar(
            x[i], y[i], xerr=xerr[:, i : i + 1], yerr=yerr[:, i : i + 1], fmt=shapes[r["label"]], ms=ms, color=palette[r["label"]],
            ecolor=palette[r["label"]], elinewidth=0.8, capsize=1.5)
        texts.append(ax.text(x[i], y[i], r["label"], fontsize=points("legend.fontsize"), color="0.15"))
    front = pareto_front(x, y)
    if len(front):
        ax.plot(x[front], y[front], "-", color="0.2", lw=0.8, zorder=0)
        handles["Pareto front (no other setting better on both)"] = ax.scatter(
            x[front], y[front], s=(2.2 * ms) ** 2, facecolors="none", edgecolors="0.1", lw=0.9)
    lowest = [*(x - xerr[0]), *(y - yerr[0])]
    if references is not None and len(references):
        v = references.sort_values("task")
        for col, what in (("chance_accuracy", "chance"), ("majority_accuracy", "majority class")):
            style = REFERENCE_STYLE["chance" if what == "chance" else "majority"]
            handles[f"{what} (new task: vertical, old: horizontal)"] = ax.axvline(100 * v[col].iloc[-1], **style)
            lowest.append(100 * v[col].iloc[-1])
            if len(v) > 1:
                ax.axhline(100 * v[col].iloc[:-1].mean(), **style)
                lowest.append(100 * v[col].iloc[:-1].mean())
    ax.set_xlabel("new (last) task accuracy (%)")
    ax.set_ylabel("old tasks' mean accuracy (%)")
    if len(s):
        low = max(0.0, 10 * math.floor(min(lowest) / 10)) if lowest else 0.0
        ax.set_xlim(low - MARGIN, 100 + MARGIN)
        ax.set_ylim(low - MARGIN, 100 + MARGIN)
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=legend_cols,
                   title=legend_title)
        adjust_text(texts, ax=ax, expand=(1.2, 1.4), arrowprops=dict(arrowstyle="-", color="0.5", lw=0.5))
    else:
        ax.set_xlim(-MARGIN, 100 + MARGIN)
        ax.set_ylim(-MARGIN, 100 + MARGIN)
        ax.text(0.5, 0.5, "no complete runs yet", transform=ax.transAxes, ha="center", color="0.4")
    if title:
        ax.set_title(title)
    return save(fig, out, f"{prefix}tradeoff", look)


def kl_vs_forgetting(table: pd.DataFrame, where: str, out: Path, prefix: str, look: Look = Look()) -> list[Path]:
    """Forgetting (points, or nats per token for causal LMs) against KL drift from the base model, one point
    per complete run: a panel for the new task's inputs and one for the old tasks' (and, where the rows record
    it, one for the weight change ‖θ − θ_base‖₂), side by side (page width) or one above the other (column
    width), with the pooled least-squares line and parabola and each method's line (its R² in the legend)."""
    order = label_order(table, look)
    d = table[(table["status"] == "complete") & table["label"].isin(order)]
    y = forgetting_column(table)
    scale = 100 if y == "forgetting_max" else 1  # accuracy points, or nats per token
    palette, shapes = colors(table), markers(table)
    W = look.inches
    column = look.width == "column" or points("axes.labelsize") > 10  # larger type: one panel above the other
    legend_cols = 1  # the fits' entries are long: one column keeps them inside the figure
    title = wrap(f"Does drift from the base model, KL(p_base ‖ p_final), predict forgetting? One point per run"
                 f"\n{where}", W, "figure.titlesize") if look.titles else ""
    with_dtheta = "weight_change" in d and d["weight_change"].notna().any()  # recorded: the predictor the paper rules out
    entries = d["label"].nunique() + (2 + with_dtheta) * (2 + d.assign(_m=method_key(d))["_m"].nunique())
    panel_h = (1.9 if column else 2.5) * max(1.0, points("axes.labelsize") / 8)
    height = (line_in("figure.titlesize", n_lines(title)) + (2 if column else 1) * (panel_h + 2 * line_in("axes.titlesize"))
              + line_in("legend.fontsize", math.ceil(entries / legend_cols)) + line_in("legend.title_fontsize") + 0.2)
    panels = [("kl_new_task", "KL on the new (last) task's test inputs"), ("kl_old_tasks", "KL on the old tasks' test inputs")]
    if with_dtheta:
        panels.append(("weight_change", "weight change ‖θ − θ_base‖₂"))
        height += (panel_h + 2 * line_in("axes.titlesize")) if column else 0
    n = len(panels)
    fig, axes = plt.subplots(n if column else 1, 1 if column else n, figsize=(W, height), sharey=True,
                             layout="constrained")
    handles: dict[str, object] = {}
    for ax, (col, on) in zip(axes, panels):
        short = {"kl_new_task": "new-task KL", "kl_old_tasks": "old-task KL"}.get(col, "‖Δθ‖₂")
        for label in order:
            g = d[d["label"] == label]
            if len(g):
                handles[label] = ax.scatter(g[col], scale * g[y], color=palette[label], marker=shapes[label], label=label,
                                            s=plt.rcParams["lines.markersize"] ** 2)
        fit = kl_fit(d.assign(kl_new_task=d[col]))
        fitted = "too few runs for a fitted line"
        low, high = (-100.0, 100.0) if scale == 100 else (-math.inf, math.inf)  # what the quantity can take

        def line(f, xs):  # the fitted line, cut where it leaves the quantity's range
            ys = scale * (f["intercept"] + f["slope"] * xs)
            return xs[(ys >= low) & (ys <= high)], ys[(ys >= low) & (ys <= high)]

        if fit:
            xs = np.linspace(d[col].min(), d[col].max(), 50)
            lo, hi = (scale * v for v in fit["slope_ci95"])
            handles[f"{short}, all runs: slope {scale * fit['slope']:.3g} [{lo:.3g}, {hi:.3g}], "
                    f"n = {fit['n']}, {fit['configs']} configs"] = ax.plot(*line(fit, xs), color="0.2", lw=0.9)[0]
            fitted = f"line R² = {fit['r2']:.2f}"
            if "quad" in fit:
                q = fit["quad"]
                ys = scale * (q["c0"] + q["c1"] * xs + q["c2"] * xs * xs)
                keep = (ys >= low) & (ys <= high)
                handles[f"{short}, all runs: least-squares parabola"] = ax.plot(xs[keep], ys[keep], color="0.2", lw=0.9,
                                                                      ls="--")[0]
                fitted += f", parabola R² = {q['r2']:.2f}"
            fitted += f" (n = {fit['n']}, {fit['configs']} configs)"
        for m in sorted(set(method_key(d))):  # each method's own line, in its colour, beside the pooled one
            g = d[method_key(d) == m]
            f = kl_fit(g.assign(kl_new_task=g[col])) if g["label"].nunique() > 1 or len(g) >= 3 else None
            if f and len(set(method_key(d))) > 1:
                xs = np.linspace(g[col].min(), g[col].max(), 20)
                lo, hi = (scale * v for v in f["slope_ci95"])
                colour = sns.color_palette(family(m), SHADES)[6]
                r2 = f"R² {f['r2']:.2f}" + (f", parabola {f['quad']['r2']:.2f}" if "quad" in f else "")
                handles[f"{short}, {m}: slope {scale * f['slope']:.3g} [{lo:.3g}, {hi:.3g}], {r2}, n = {f['n']}, "
                        f"{f['configs']} config{'s' * (f['configs'] > 1)}"] = ax.plot(*line(f, xs), color=colour,
                                                                                     lw=0.8, ls="-.")[0]
        ax.set_title(wrap(f"{on}\n{fitted}", W / (1 if column else n), "axes.titlesize"))
        ax.set_xlabel("weight change (L2 norm)" if col == "weight_change" else "KL from the base model (nats)")
        ax.locator_params(axis="x", nbins=5)
        clip_limits(ax, "x", low=0.0)
    axes[0].set_ylabel("forgetting, max-based (points)" if scale == 100
                       else f"NLL rise, max-based (nats per {nll_unit(table)})")
    if column:
        for ax in axes[1:]:
            ax.set_ylabel(axes[0].get_ylabel())
            ax.yaxis.set_tick_params(labelleft=True)
    if scale == 100:
        clip_limits(axes[0], "y", low=-100.0 - MARGIN, high=100.0 + MARGIN, margin=0)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=legend_cols,
                   title="one point per run; lines: least squares, slope [95% t-interval]")
    if title:
        fig.suptitle(title)
    return save(fig, out, f"{prefix}kl_vs_forgetting", look)


def figure_set(runs: list[Run], table: pd.DataFrame, out: Path, prefix: str = "", look: Look = Look()) -> list[Path]:
    """Every figure for the runs of one benchmark and scenario, of the experiments ``look.labels`` names."""
    where = f"{runs[0].benchmark}, {runs[0].scenario}-incremental"
    runs = [r for r in runs if len(r.rows)]  # a run that recorded nothing yet is only in the summary
    table = table[table["run_id"].isin({r.run_id for r in runs})]
    if look.labels is not None:
        table = table[table["label"].isin(look.labels)]
        runs = [r for r in runs if r.run_id in set(table["run_id"])]
    if not runs:
        return []
    out.mkdir(parents=True, exist_ok=True)
    nll = [r for r in runs if r.reports_nll]  # the objective's report_measures say so, not the columns present
    with plt.rc_context(style_rc(look.style)):
        return (forgetting_curves(runs, table, where, out, prefix, look)
                + accuracy_heatmaps(runs, table, where, out, prefix, look)
                + (forgetting_curves(nll, table[table["run_id"].isin({r.run_id for r in nll})], where, out, prefix,
                                     look, value="nll") if nll else [])
                + tradeoff(table, where, out, prefix, reference_accuracies(runs), look)
                + kl_vs_forgetting(table, where, out, prefix, look))
