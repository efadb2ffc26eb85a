"""The README's table of an LM study: a measure of each task at the end of each task, mean ± sd over seeds.

    python benchmarks/lm_table.py results/lm-domains                      # held-out NLL (nats per byte)
    python benchmarks/lm_table.py results/lm-completion --measure answer_accuracy

One row per method (kl by λ, LoRA by rank); per task k, its value at the end of task k and of every later
task, and the change from the end of task k to the end of the stream (its forgetting: an NLL rise, an
accuracy fall); then, per run, that change on task 0 and the methods' ordering of it, which the README
quotes. Tasks measured but never learned (lm-eval's, evaluation-only) are shown from the end of task 0 on;
lm-eval's rows give their task's main metric (e.g. acc) whatever --measure says.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from forgetting.results import read_metrics_csv


def label(run: Path) -> str:
    config = json.loads((run / "config.json").read_text())
    method = config["method"]["name"]
    options = {**config["method"].get("options", {}), **config["method"].get("settings", {})}
    rank = config["model"]["options"].get("lora_rank", 0)
    if rank:
        return f"LoRA rank {rank} ({method})"
    if "kl_lambda" in options and method.startswith("kl"):
        return f"{method} λ={options['kl_lambda']:g}"
    return method


def ends(results: Path, measure: str) -> pd.DataFrame:
    """method, seed, eval task, trained task -> the measure at the end of that task (its last epoch)."""
    frames = []
    for run in sorted(p for p in results.iterdir() if (p / "metrics.csv").is_file()):
        manifest = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").is_file() else {}
        if manifest.get("status") != "complete":
            continue  # running, killed or failed: not in the table
        rows = read_metrics_csv(run / "metrics.csv")
        rows = rows[rows["phase"] == "epoch"]
        last = rows.groupby("trained_task")["epoch"].transform("max")
        rows = rows[rows["epoch"] == last].copy()
        rows["method_label"] = label(run)
        frames.append(rows)
    out = pd.concat(frames)
    general = out["lm_eval_metric"].notna() if "lm_eval_metric" in out else False
    out["value"] = out[measure].where(~general, out["accuracy"])  # lm-eval's rows: its task's main metric
    return out[["method_label", "seed", "eval_task", "eval_task_name", "trained_task", "value"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--measure", default="nll")
    args = parser.parse_args()
    data = ends(args.results, args.measure)
    n_learned = int(data["trained_task"].max()) + 1
    names = data.drop_duplicates("eval_task").set_index("eval_task")["eval_task_name"].to_dict()
    short = {k: v[v.find("[") + 1 : -1] if "[" in v else v for k, v in names.items()}
    cells = data.pivot_table(index=["method_label", "seed"], columns=["eval_task", "trained_task"], values="value")
    columns, heads = [], []
    for k in sorted(names):
        first = min(k, n_learned - 1) if k < n_learned else 0
        for t in range(first, n_learned):
            columns.append(((k, t),))
            heads.append(f"{short[k]} after {t}")
        if first < n_learned - 1:
            columns.append(((k, n_learned - 1), (k, first)))
            heads.append(f"{short[k]}, {n_learned - 1} minus {first}")
    order = sorted(cells.index.get_level_values(0).unique(),
                   key=lambda m: (not m.startswith("naive"), m.startswith("replay"), m.startswith("LoRA"), m))
    print("| method | " + " | ".join(heads) + " | seeds |")
    print("|---" * (len(heads) + 2) + "|")
    for m in order:
        per_seed = cells.loc[m]
        values = []
        for col in columns:
            v = per_seed[col[0]] - (per_seed[col[1]] if len(col) == 2 else 0)
            values.append(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}")
        print(f"| {m} | " + " | ".join(values) + f" | {len(per_seed)} |")
    print()
    change = (cells[(0, n_learned - 1)] - cells[(0, 0)]).unstack(0)
    print(f"{short[0]}, end of stream minus end of task 0, per seed (rows) and method (columns):")
    print(change[order].round(3).to_string())


if __name__ == "__main__":
    main()
