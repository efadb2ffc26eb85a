"""``python -m forgetting.plot RESULTS [RESULTS ...] [--out DIR]``: figures and a summary from result files.

Reads only run directories (config.json, manifest.json, metrics.csv), so it works on results
copied from another machine. One figure set per benchmark and scenario: in ``DIR`` itself when
there is one, else in ``DIR/<benchmark>-<scenario>/``; ``summary.md``, ``summary.csv``, ``runs.csv``
(one row per run with every config field) and ``report.html`` (all of it on one page) cover all.
The figures are for a paper: PDF, SVG and 300-dpi PNG, a column or a page wide, with options
for which experiments and tasks they draw (``--methods``, ``--tasks``, ``--bands``, ``--width``,
``--style``, ``--formats``; the same keywords in ``write_report`` and ``figures``).
"""

from __future__ import annotations

import argparse
import errno
import shlex
import sys
from pathlib import Path
from typing import Sequence

from .budget import BUDGET_KEYS
from .errors import EXIT_BAD_INPUT, BadInput, OneLineParser, command_name
from .gc_freeze import freeze_after_imports
from .report_look import DEFAULT_STYLE, DEFAULT_WIDTH, FORMATS, STYLES, WIDTHS, Look, check_style, choose_labels, \
    choose_tasks
from .results import atomic_write_text


def _look(table, base: Look, methods, tasks) -> Look:
    from dataclasses import replace

    from .report_figures import colors

    return replace(base, labels=choose_labels(table, methods, list(colors(table))), tasks=choose_tasks(table, tasks))


# runs that differ in budget (forgetting.budget.BUDGET_KEYS) are not comparable point for point, so each
# budget gets figures of its own (the summary tables still list every run, the budget in its variant)


def budget_of(run) -> tuple:
    """The run's budget: its (option, value) pairs among ``BUDGET_KEYS``, in a fixed order."""
    return tuple(sorted((k.split(".")[-1], v) for k, v in run.experiment().items() if k.split(".")[-1] in BUDGET_KEYS))


def figure_groups(runs) -> dict[tuple[str, str, str], list]:
    """Runs by benchmark, scenario and, where they differ in budget, budget (``epochs=1,batch_size=64``;
    '' where one budget covers the benchmark and scenario). A note on stderr names the differing options."""
    import sys

    sets: dict[tuple[str, str], dict[tuple, list]] = {}
    for r in runs:
        sets.setdefault((r.benchmark, r.scenario), {}).setdefault(budget_of(r), []).append(r)
    out: dict[tuple[str, str, str], list] = {}
    for (bench, scen), budgets in sorted(sets.items()):
        if len(budgets) == 1:
            out[bench, scen, ""] = next(iter(budgets.values()))
            continue
        keys = sorted({k for b in budgets for k, _ in b})
        differing = [k for k in keys if len({dict(b).get(k) for b in budgets}) > 1]
        for b, group in sorted(budgets.items(), key=lambda kv: repr(kv[0])):
            out[bench, scen, ",".join(f"{k}={dict(b).get(k)}" for k in differing)] = group
        print(f"note: {bench}, {scen}: runs differ in {', '.join(differing)}; each budget is drawn in figures of "
              "its own", file=sys.stderr)
    return out


def write_report(paths: Sequence[str | Path], out: str | Path, command: str | None = None, *,
                 methods: str | Sequence[str] | None = None, tasks: str | Sequence[int] | None = None,
                 bands: bool = True, width: str = DEFAULT_WIDTH, style: str = DEFAULT_STYLE,
                 formats: str | Sequence[str] = FORMATS, titles: bool | None = None) -> list[Path]:
    """Read every run under ``paths`` and write the figures, the summary, ``runs.csv`` and ``report.html``
    into ``out``; the files written. ``command`` is shown in the page as what made it.

    The figures draw the experiments ``methods`` names (methods or experiment labels, in that order;
    default all) with a forgetting-curve panel per old task in ``tasks`` (default all), 95% bands unless
    ``bands`` is False, ``width`` "column" (3.5 in) or "page" (7.16 in), ``style`` a seaborn context
    (paper, notebook, talk, poster), as ``formats`` (pdf, svg, png; PNG at 300 dpi), with a title over
    each figure if ``titles`` (default: off for the paper style, whose caption carries it). The summary
    tables always cover every run.

    BadInput (nothing written) for a path without runs, a corrupt file, an unknown schema version, or
    an option value not allowed.
    """
    look = check_style(bands, width, style, formats, titles)
    from .report_figures import figure_set
    from .report_html import write_html
    from .report_runs import load_runs, runs_config_table
    from .report_summary import reference_accuracies, run_table, write_summary

    if not paths:
        raise BadInput("no results paths given: name at least one results directory or run directory")
    runs = load_runs(paths)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out: {str(out)!r} is a file, not a directory")
    table = run_table(runs)
    look = _look(table, look, methods, tasks)
    sets = figure_groups(runs)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    figures: dict[tuple[str, str], list[Path]] = {}
    for (bench, scen, budget), group in sets.items():
        sub = out if len(sets) == 1 else out / f"{bench}-{scen}"
        sub = sub / budget if budget else sub
        ids = {r.run_id for r in group}
        drawn = figure_set(group, table[table["run_id"].isin(ids)].reset_index(drop=True), sub, look=look)
        figures[bench, scen] = figures.get((bench, scen), []) + drawn
        written += drawn
    written += write_summary(table, out, reference_accuracies(runs))
    configs = runs_config_table(runs)
    runs_csv = out / "runs.csv"  # one row per run: its numbers, every config field, its command
    atomic_write_text(runs_csv, table.merge(configs[["run_id"] + [c for c in configs if c not in table]],
                                            on="run_id", how="left").to_csv(index=False))
    command = command or " ".join(["python -m forgetting.plot", *map(str, paths), "--out", str(out)])
    html = write_html(out, table, figures, dict(zip(configs["run_id"], configs["command"])), command)
    return written + [runs_csv, html]


def figures(df, *, methods: str | Sequence[str] | None = None, tasks: str | Sequence[int] | None = None,
            bands: bool = True, width: str = DEFAULT_WIDTH, style: str = DEFAULT_STYLE,
            titles: bool | None = None) -> dict:
    """The report's figures as matplotlib figures, by name (``forgetting_curves``, ...; prefixed with
    ``benchmark-scenario/`` when ``df`` holds several), from a ``forgetting.load_results`` frame or any
    subset of its rows; nothing is written. The keywords are ``write_report``'s. Save one as the report
    does with ``forgetting.report_figures.save``; close them with ``matplotlib.pyplot.close``."""
    look = check_style(bands, width, style, titles=titles)
    from .api import runs_from_frame
    from .report_figures import Collect, figure_set
    from .report_summary import run_table

    runs = runs_from_frame(df)
    if not runs:
        raise BadInput("no runs in the frame: load some with forgetting.load_results(path)")
    table = run_table(runs)
    look = _look(table, look, methods, tasks)
    sets = figure_groups(runs)
    out: dict = {}
    for (bench, scen, budget), group in sets.items():
        got = Collect()
        ids = {r.run_id for r in group}
        figure_set(group, table[table["run_id"].isin(ids)].reset_index(drop=True), got, look=look)
        where = "" if len(sets) == 1 else f"{bench}-{scen}/" + (f"{budget}/" if budget else "")
        out.update({f"{where}{name}": fig for name, fig in got.items()})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the command's own process (console script, python -m): see gc_freeze
        freeze_after_imports()
    p = OneLineParser(prog=command_name("plot"),
                description="Forgetting curves, accuracy matrices, the stability-plasticity trade-off, KL drift "
                            "against forgetting, and summary.md / summary.csv (mean and 95% t-interval over "
                            "seeds) from run directories; each figure as PDF, SVG and 300-dpi PNG, sized for a "
                            "paper (a column or a page wide, 7-9 pt type).")
    from . import __version__

    p.add_argument("--version", action="version", version=f"forgetting {__version__}")
    p.add_argument("results", nargs="+", metavar="RESULTS", help="results directories or run directories")
    p.add_argument("--out", default="report", help="where the figures and summary go (default: report)")
    p.add_argument("--quiet", action="store_true", help="do not list the files written")
    g = p.add_argument_group("figures (the summary tables always cover every run)")
    g.add_argument("--methods", metavar="LIST", default=None,
                   help="the experiments drawn, in this order, comma-separated: a method (kl: each of its strengths) "
                        "or an experiment as summary.md names it ('kl, λ=0.5') (default: all)")
    g.add_argument("--tasks", metavar="LIST", default=None,
                   help="the old tasks that get a forgetting-curve panel, by number, comma-separated, e.g. 0,2 "
                        "(default: all)")
    g.add_argument("--bands", action=argparse.BooleanOptionalAction, default=True,
                   help="the 95%% t-interval band around each forgetting curve (default: on)")
    g.add_argument("--width", choices=list(WIDTHS), default=DEFAULT_WIDTH,
                   help="figure width: " + ", ".join(f"{w} ({inches} in)" for w, inches in WIDTHS.items())
                        + f" (default: {DEFAULT_WIDTH})")
    g.add_argument("--style", choices=STYLES, default=DEFAULT_STYLE,
                   help="seaborn context: paper (7-9 pt type at the printed size), notebook, talk or poster "
                        f"(larger type) (default: {DEFAULT_STYLE})")
    g.add_argument("--formats", metavar="LIST", default=",".join(FORMATS),
                   help=f"the files of each figure, comma-separated from {', '.join(FORMATS)}; PNG at 300 dpi, "
                        "embedded in report.html (default: pdf,svg,png)")
    g.add_argument("--titles", action=argparse.BooleanOptionalAction, default=None,
                   help="a title over each figure (default: off for --style paper, whose caption carries it; "
                        "on for the others)")
    ns = p.parse_args(argv)
    try:
        command = shlex.join(["python", "-m", "forgetting.plot", *(sys.argv[1:] if argv is None else argv)])
        files = write_report(ns.results, ns.out, command=command, methods=ns.methods, tasks=ns.tasks,
                             bands=ns.bands, width=ns.width, style=ns.style, formats=ns.formats,
                             titles=ns.titles)
    except BadInput as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # --out read-only, or a full disk: one line; a choice of --out is bad input, a full disk not
        where = e.filename or ns.out
        print(f"{p.prog}: error: cannot write {where}: {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else 1
    if not ns.quiet:
        print("\n".join(map(str, files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
