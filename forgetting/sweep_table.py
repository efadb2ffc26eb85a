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
    lm = df["nll_rise_mean"].notna() if "nll_rise_mean" in df else pd.Series(False, index=df.index)
    for _, row in df[~lm].iterrows():
        label = str(row["label"]) + ("" if row["status"] == "complete" else " (unfinished)")
        lines.append(f"{row['benchmark']:<16}{row['scenario']:<9}{label[:29]:<30}{int(row['n_seeds']):>6}  "
                     f"{pct(row, 'average_accuracy'):>20}  {pct(row, 'old_task_accuracy'):>20}  "
                     f"{pct(row, 'forgetting_max'):>20}")
    if lm.any():  # causal LMs: held-out NLL (what their forgetting is), not token accuracy
        def nll(row, key):
            m, lo, hi = row[f"{key}_mean"], row[f"{key}_ci95_lo"], row[f"{key}_ci95_hi"]
            return "-" if pd.isna(m) else f"{m:6.3f}" + ("" if pd.isna(lo) else f" [{lo:6.3f},{hi:6.3f}]")

        lines += ["", "language models (after the last task; held-out NLL in nats per token, per byte for --model gpt2; "
                  "mean [95% CI over seeds]):",
                  f"{'benchmark':<16}{'scenario':<9}{'method':<30}{'seeds':>6}  {'new-task NLL':>22}  "
                  f"{'old-task NLL':>22}  {'NLL rise':>22}"]
        for _, row in df[lm].iterrows():
            label = str(row["label"]) + ("" if row["status"] == "complete" else " (unfinished)")
            lines.append(f"{row['benchmark']:<16}{row['scenario']:<9}{label[:29]:<30}{int(row['n_seeds']):>6}  "
                         f"{nll(row, 'new_task_nll'):>22}  {nll(row, 'old_task_nll'):>22}  "
                         f"{nll(row, 'nll_forgetting_max'):>22}")
    return "\n".join(lines)
