"""``report.html``: one self-contained page with the summary tables, every figure and the commands behind them.

A person opens one file in a browser instead of hunting through a folder: figures are embedded
as PNG data URIs (SVG when no PNG was asked for; the PDFs and SVGs stay beside it for papers),
tables are plain HTML, and each run's row carries the ``python -m forgetting.run`` command that
computes it again.
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .report_summary import LM_METRICS, METRICS, summarize
from .results import atomic_write_text

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.text { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
code, pre { font-size: 0.85em; background: #f6f6f6; } pre { padding: 0.5em; overflow-x: auto; white-space: pre-wrap; }
.unfinished { color: #a00; }
"""


def _number(value, pct: bool, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{(100 if pct else 1) * value:.{digits}f}"


def _cell(row: pd.Series, metric: str, pct: bool) -> str:
    digits = 1 if pct or metric == "wall_time_s" else 3
    text = _number(row[f"{metric}_mean"], pct, digits)
    lo, hi = row[f"{metric}_ci95_lo"], row[f"{metric}_ci95_hi"]
    if text != "–" and not (isinstance(lo, float) and math.isnan(lo)):
        text += f" [{_number(lo, pct, digits)}, {_number(hi, pct, digits)}]"
        if bool(row.get(f"{metric}_ci95_cut", False)):
            text += "†"  # cut to the range the quantity can take, as in summary.md
    return text


def _table(head: list[str], rows: list[list[str]], text_columns: int, classes: list[str] | None = None) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(
            f'<td class="text">{c}</td>' if j < text_columns else f"<td>{c}</td>" for j, c in enumerate(r)) + "</tr>")
    return "\n".join(out + ["</table>"])


def summary_tables(table: pd.DataFrame) -> dict[tuple[str, str], str]:
    """Per benchmark and scenario: the summary table (mean [95% interval] over seeds), as in summary.md."""
    out = {}
    for (bench, scen), s in summarize(table).groupby(["benchmark", "scenario"], sort=True):
        shown = [(m, h, pct) for m, h, pct, _ in METRICS if m not in LM_METRICS or s[f"{m}_mean"].notna().any()]
        head = ["method", "variant", "runs"] + [h + (" (%)" if pct else "") for _, h, pct in shown]
        rows, classes = [], []
        for _, r in s.iterrows():
            runs = (f"{r['n_seeds']} (seeds {r['seeds']})" if r["status"] == "complete"
                    else f"unfinished: {r['state']} (run {r['run_ids']})")
            rows.append([html.escape(str(r["name"])), html.escape(r["variant"] or "–"),
                         html.escape(runs)] + [_cell(r, m, pct) for m, _, pct in shown])
            classes.append("" if r["status"] == "complete" else "unfinished")
        out[(bench, scen)] = _table(head, rows, 3, classes)
    return out


def runs_table(table: pd.DataFrame, commands: dict[str, str]) -> str:
    head = ["run", "benchmark", "scenario", "experiment", "seed", "state", "command"]
    rows = [[f"<code>{html.escape(r['run_id'])}</code>", html.escape(r["benchmark"]), html.escape(r["scenario"]),
             html.escape(r["label"]), str(r["seed"]), html.escape(r["state"]),
             f"<code>{html.escape(commands.get(r['run_id'], ''))}</code>"] for _, r in table.iterrows()]
    return _table(head, rows, len(head))


MIME = {".png": "image/png", ".svg": "image/svg+xml"}


def embed_png(path: Path) -> str:
    """An ``<img>`` holding the PNG (or SVG) file itself as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:{MIME[Path(path).suffix]};base64,{data}" alt="{html.escape(Path(path).stem)}">'


def write_html(out: Path, table: pd.DataFrame, figures: dict[tuple[str, str], list[Path]], commands: dict[str, str],
               plot_command: str) -> Path:
    """``out/report.html``: per benchmark and scenario the summary table and every figure (its PNG, else its
    SVG), then every run."""
    tables = summary_tables(table)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>forgetting: report</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>Forgetting report</h1>",
             f"<p>Made {datetime.now(timezone.utc).isoformat(timespec='seconds')} by</p>",
             f"<pre>{html.escape(plot_command)}</pre>",
             "<p>Each summary row pools the complete runs of one experiment over seeds: the mean, then in "
             "brackets the 95% t-interval over seeds, cut to the range the quantity can take († where cut; one "
             "seed gives none). Accuracies, forgetting and "
             "transfers in percentage points after the last task; definitions in <code>summary.md</code>. "
             "Figures are also in the folder (PDF, SVG and 300-dpi PNG unless --formats chose fewer); every "
             "run's command is in the last table and in "
             "<code>runs.csv</code>.</p>"]
    for key in sorted(set(tables) | set(figures)):
        bench, scen = key
        parts.append(f"<h2>{html.escape(bench)}, {html.escape(scen)}-incremental</h2>")
        if key in tables:
            parts.append(tables[key])
        files: dict[Path, list[Path]] = {}
        for p in figures.get(key, []):
            files.setdefault(p.with_suffix(""), []).append(p)
        for stem, paths in files.items():
            shown = next((p for suffix in MIME for p in paths if p.suffix == suffix), None)
            names = [p.relative_to(out) if p.is_relative_to(out) else p for p in paths]
            listed = ", ".join(f"<code>{html.escape(str(n))}</code>" for n in names)
            parts.append(f"<figure>{embed_png(shown) if shown else ''}<figcaption>{listed}</figcaption></figure>")
    parts += ["<h2>Runs</h2>", runs_table(table, commands), "</body></html>"]
    path = Path(out) / "report.html"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path
