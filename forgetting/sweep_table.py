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

    def cell(row, key, scale):  # the interval as the summary gives it: cut to the quantity's range, † when cut
        if f"{key}_mean" not in row:
            return "-"
        m, lo, hi = row[f"{key}_mean"], row[f"{key}_ci95_lo"], row[f"{key}_ci95_hi"]
        if pd.isna(m):
            return "-"
        cut = "†" if str(row.get(f"{key}_ci95_cut", False)) == "True" else " "
        fmt = "5.1f" if scale == 100 else "5.3f"
        return f"{scale * m:{fmt}}" + ("" if pd.isna(lo) else f" [{scale * lo:{fmt}},{scale * hi:{fmt}}]{cut}")

    lines = ["", "old tasks kept (after the last task; mean [95% CI over seeds, † cut to the possible range]; "
             "accuracies and forgetting in %, NLL in nats per token, per byte for --model gpt2):"]
    header = None
    for _, row in df.iterrows():
        measures = parse_measures(row.get("report_measures"))
        if measures != header:  # each run's objective says what its rows show (accuracy; NLL for causal LMs)
            header = measures
            lines.append(f"{'benchmark':<16}{'scenario':<9}{'method':<30}{'seeds':>6}"
                         + "".join(f"  {h:>20}" for _, h, _ in measures))
        label = str(row["label"]) + ("" if row["status"] == "complete" else " (unfinished)")
        lines.append(f"{row['benchmark']:<16}{row['scenario']:<9}{label[:29]:<30}{int(row['n_seeds']):>6}"
                     + "".join(f"  {cell(row, c, scale):>20}" for c, _, scale in measures))
    return "\n".join(lines)


CLASSIFIER = [("average_accuracy", "avg acc", 100.0), ("old_task_accuracy", "old-task acc", 100.0),
              ("forgetting_max", "forgetting", 100.0)]  # runs whose manifest predates report_measures


def parse_measures(text) -> list[tuple[str, str, float]]:
    """``column:heading:scale;...`` (summary.csv's report_measures) as tuples; the classifier's when empty."""
    if not isinstance(text, str) or not text.strip():
        return CLASSIFIER
    return [(c, h, float(s)) for c, h, s in (part.split(":") for part in text.split(";"))]
