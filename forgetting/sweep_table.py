"""The table a sweep prints at its end: what each experiment kept of its old tasks."""

from __future__ import annotations

from pathlib import Path


def console_table(summary_csv: Path) -> str:
    """One line per experiment from the report's summary.csv (empty when there is nothing to show)."""
    import pandas as pd

    if not summary_csv.is_file():
        return ""
    # names as text, whatever they look like ("NA", "null" and "nan" included): only an empty cell is missing
    text = {c: str for c in ("benchmark", "scenario", "method", "name", "variant", "label", "status", "state", "seeds")}
    df = pd.read_csv(summary_csv, dtype=text, keep_default_na=False, na_values=[""])
    if df.empty:
        return ""

    def pct(row, key):  # the interval as the summary gives it: cut to the quantity's range, † when cut
        m, lo, hi = row[f"{key}_mean"], row[f"{key}_ci95_lo"], row[f"{key}_ci95_hi"]
        if pd.isna(m):
            return "-"
        cut = "†" if str(row.get(f"{key}_ci95_cut", False)) == "True" else " "
        return f"{100 * m:5.1f}" + ("" if pd.isna(lo) else f" [{100 * lo:5.1f},{100 * hi:5.1f}]{cut}")

    lines = ["", "old tasks kept (after the last task; mean [95% CI over seeds, † cut to the possible range], in %):",
             f"{'benchmark':<16}{'scenario':<9}{'method':<30}{'seeds':>6}  {'avg acc':>20}  "
             f"{'old-task acc':>20}  {'forgetting':>20}"]
    for _, row in df.iterrows():
        label = str(row["label"]) + ("" if row["status"] == "complete" else " (unfinished)")
        lines.append(f"{row['benchmark']:<16}{row['scenario']:<9}{label[:29]:<30}{int(row['n_seeds']):>6}  "
                     f"{pct(row, 'average_accuracy'):>20}  {pct(row, 'old_task_accuracy'):>20}  "
                     f"{pct(row, 'forgetting_max'):>20}")
    return "\n".join(lines)
