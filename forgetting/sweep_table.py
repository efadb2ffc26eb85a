"""The table a sweep prints at its end: what each experiment kept of its old tasks."""

from __future__ import annotations

from pathlib import Path


def console_table(summary_csv: Path) -> str:
    """One line per experiment from the report's summary.csv (empty when there is nothing to show)."""
    import pandas as pd

    if not summary_csv.is_file():
        return ""
    df = pd.read_csv(summary_csv)
    if df.empty:
        return ""

    def pct(row, key):
        m, lo, hi = row[f"{key}_mean"], row[f"{key}_ci95_lo"], row[f"{key}_ci95_hi"]
        if pd.isna(m):
            return "-"
        return f"{100 * m:5.1f}" + ("" if pd.isna(lo) or lo == hi else f" ±{100 * (hi - lo) / 2:4.1f}")

    lines = ["", "old tasks kept (after the last task; mean ±95% CI half-width over seeds, in %):",
             f"{'benchmark':<16}{'scenario':<9}{'method, lambda':<30}{'seeds':>6}  {'avg acc':>12}  "
             f"{'old-task acc':>12}  {'forgetting':>12}"]
    for _, row in df.iterrows():
        label = str(row["label"]) + ("" if row["status"] == "complete" else " (unfinished)")
        lines.append(f"{row['benchmark']:<16}{row['scenario']:<9}{label[:29]:<30}{int(row['n_seeds']):>6}  "
                     f"{pct(row, 'average_accuracy'):>12}  {pct(row, 'old_task_accuracy'):>12}  "
                     f"{pct(row, 'forgetting_max'):>12}")
    return "\n".join(lines)
