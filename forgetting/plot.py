"""``python -m forgetting.plot RESULTS [RESULTS ...] [--out DIR]``: figures and a summary from result files.

Reads only run directories (config.json, manifest.json, metrics.csv), so it works on results
copied from another machine. One figure set per benchmark and scenario: in ``DIR`` itself when
there is one, else in ``DIR/<benchmark>-<scenario>/``; ``summary.md`` and ``summary.csv`` cover all.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from .errors import EXIT_BAD_INPUT, BadInput, OneLineParser


def write_report(paths: Sequence[str | Path], out: str | Path) -> list[Path]:
    """Read every run under ``paths`` and write the figures and summary into ``out``; the files written.

    BadInput (nothing written) for a path without runs, a corrupt file, or an unknown schema version.
    """
    from .report_figures import figure_set
    from .report_runs import load_runs
    from .report_summary import reference_accuracies, run_table, write_summary

    if not paths:
        raise BadInput("no results paths given: name at least one results directory or run directory")
    runs = load_runs(paths)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out: {str(out)!r} is a file, not a directory")
    table = run_table(runs)
    sets: dict[tuple[str, str], list] = {}
    for r in runs:
        sets.setdefault((r.benchmark, r.scenario), []).append(r)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for (bench, scen), group in sorted(sets.items()):
        sub = out if len(sets) == 1 else out / f"{bench}-{scen}"
        ids = {r.run_id for r in group}
        written += figure_set(group, table[table["run_id"].isin(ids)].reset_index(drop=True), sub)
    return written + write_summary(table, out, reference_accuracies(runs))


def main(argv: Sequence[str] | None = None) -> int:
    p = OneLineParser(prog="python -m forgetting.plot",
                description="Forgetting curves, accuracy matrices, the stability-plasticity trade-off, KL drift "
                            "against forgetting, and summary.md / summary.csv (mean and 95% t-interval over "
                            "seeds) from run directories.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"forgetting {__version__}")
    p.add_argument("results", nargs="+", metavar="RESULTS", help="results directories or run directories")
    p.add_argument("--out", default="report", help="where the figures and summary go (default: report)")
    p.add_argument("--quiet", action="store_true", help="do not list the files written")
    ns = p.parse_args(argv)
    try:
        files = write_report(ns.results, ns.out)
    except BadInput as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not ns.quiet:
        print("\n".join(map(str, files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
