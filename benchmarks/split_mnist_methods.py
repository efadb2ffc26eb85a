"""Every method on split MNIST in the three scenarios, over seeds: the table in split_mnist_methods.md.

    python benchmarks/split_mnist_methods.py            # runs what is missing, then writes the table
    python benchmarks/split_mnist_methods.py --workers 2 --seeds 0 1 2 3 4
    python benchmarks/split_mnist_methods.py --scenarios class --update     # re-measure one column only

Runs go through ``forgetting.run.run_experiment`` into ``--results-dir`` (one directory per run,
named by its config hash), so an interrupted benchmark resumes where it stopped and a finished
one only re-renders the table. Every method runs at its documented default except where a row
says otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forgetting.streams import default_data_dir  # noqa: E402
from forgetting.config import RunConfig  # noqa: E402
from forgetting.registry import make_config  # noqa: E402
from forgetting.metrics import run_summary  # noqa: E402
from forgetting import registry  # noqa: E402
from forgetting.options import check_all  # noqa: E402
from forgetting.run import run_experiment  # noqa: E402

# (row label, --method, hyper-parameters other than the defaults)
ROWS = [
    ("naive", "naive", {}),
    ("kl", "kl", {}),
    ("kl, T=2 (LwF's temperature)", "kl", {"temperature": 2.0}),
    ("kl, T=2, old classes only", "kl", {"temperature": 2.0, "kl_class_outputs": "old"}),  # differs in class only
    ("rdrop", "rdrop", {}),
    ("kl+rdrop", "kl+rdrop", {}),
    ("ewc", "ewc", {}),
    ("ewc-online", "ewc-online", {}),
    ("si", "si", {}),
    ("mas", "mas", {}),
    ("l2sp", "l2sp", {}),
    ("replay", "replay", {}),
    ("replay+kl", "replay+kl", {}),
    ("joint", "joint", {}),
]
SCENARIOS = ["task", "domain", "class"]

# van de Ven & Tolias 2019, split MNIST, average accuracy (%) over the 5 tasks after the last one:
# MLP 784-400-400-10, Adam 1e-3, batch 128, 2000 iterations per task, full MNIST (60,000 train images).
PUBLISHED = {
    "naive": {"task": 87.2, "domain": 59.2, "class": 19.9},
    "ewc": {"task": 98.6, "domain": 64.0, "class": 20.0},
    "si": {"task": 99.1, "domain": 65.4, "class": 20.0},
    "kl, T=2 (LwF's temperature)": {"task": 99.6, "domain": 71.5, "class": 23.9},
    "joint": {"task": 99.7, "domain": 98.4, "class": 97.9},
}
PUBLISHED_NAME = {"naive": "fine-tuning", "kl, T=2 (LwF's temperature)": "LwF", "ewc": "EWC", "si": "SI",
                  "joint": "joint"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=default_data_dir(), help="holds mnist/ (default: ../shared/data)")
    p.add_argument("--results-dir", default=str(ROOT / "results" / "split_mnist_methods"))
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "split_mnist_methods.md"),
                   help="markdown file the tables are written into (between the BEGIN/END TABLES markers)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--scenarios", nargs="+", default=SCENARIOS, choices=SCENARIOS)
    p.add_argument("--rows", nargs="+", default=None, help="row labels to run (default: all)")
    p.add_argument("--hidden", type=int, nargs="+", default=[400, 400])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=1, help="parallel runs (1: one after the other)")
    p.add_argument("--update", action="store_true", help="with --rows or --scenarios: replace only the cells run in "
                   "the tables already in --output, keep the others (the command is appended to 'Produced by')")
    return p.parse_args(argv)


def configs(args) -> list[tuple[str, RunConfig]]:
    rows = [r for r in ROWS if args.rows is None or r[0] in args.rows]
    out = []
    for scenario in args.scenarios:
        for label, method, hparams in rows:
            for seed in args.seeds:
                out.append((label, make_config(
                    benchmark="split-mnist", scenario=scenario, method=method,
                    hparams=check_all(registry.method_options(method), hparams),
                    model_options=check_all(list(registry.model("mlp").options), {"hidden": args.hidden}),
                    
                    epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, device="cpu",
                    data_dir=args.data_dir, results_dir=args.results_dir, progress=False,
                )))
    return out


def run_one(item) -> dict:
    import torch

    torch.set_num_threads(1)
    label, config = item
    t0 = time.perf_counter()
    _, rows, status = run_experiment(config)
    s = run_summary(rows)
    return {"row": label, "scenario": config.scenario, "seed": config.seed, "status": status,
            "seconds": time.perf_counter() - t0, "average_accuracy": 100 * s["average_accuracy"],
            "forgetting_max": 100 * s["forgetting_max"]}


def cell(values: pd.Series) -> str:
    return f"{values.mean():.1f} ± {values.std(ddof=0):.1f}"


ACC, FORG = "average accuracy", "forgetting"
BEGIN, END = "<!-- BEGIN TABLES (written by benchmarks/split_mnist_methods.py) -->", "<!-- END TABLES -->"


def cells_of(results: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """(table, row label, scenario) -> 'mean ± sd' for every row and scenario measured."""
    out = {}
    for (label, scen), r in results.groupby(["row", "scenario"]):
        out[(ACC, label, scen)] = cell(r["average_accuracy"])
        out[(FORG, label, scen)] = cell(r["forgetting_max"])
    return out


def cells_in(text: str) -> dict[tuple[str, str, str], str]:
    """The cells of tables this script wrote earlier (so that a partial run updates only its own)."""
    out, table, scen = {}, None, []
    for line in text.splitlines():
        if line.startswith("### Average accuracy"):
            table = ACC
        elif line.startswith("### Average forgetting"):
            table = FORG
        elif line.startswith("| method |") and table:
            scen = [c.strip().removesuffix(" (ours)") for c in line.strip("|").split("|")[1:]]
            scen = [c for c in scen if c in SCENARIOS]
        elif line.startswith("| ") and table and scen and not line.startswith("|---"):
            parts = [c.strip() for c in line.strip().strip("|").split("|")]
            for sc, c in zip(scen, parts[1:]):
                if c and c != "–":
                    out[(table, parts[0], sc)] = c
    return out


def tables(cells: dict, seeds) -> str:
    labels = [r[0] for r in ROWS if any(k[1] == r[0] for k in cells)]
    scen = [s for s in SCENARIOS if any(k[2] == s for k in cells)]
    lines = ["### Average accuracy (%) over the 5 tasks after the last, mean ± sd over seeds "
             f"{', '.join(map(str, seeds))}", "",
             "| method | " + " | ".join(f"{s} (ours)" for s in scen) + " | published (task / domain / class) |",
             "|---|" + "---|" * len(scen) + "---|"]
    for label in labels:
        pub = PUBLISHED.get(label)
        pub_txt = f"{PUBLISHED_NAME[label]}: " + " / ".join(f"{pub[s]:.1f}" for s in SCENARIOS) if pub else ""
        lines.append(f"| {label} | " + " | ".join(cells.get((ACC, label, s), "–") for s in scen) + f" | {pub_txt} |")
    lines += ["", "### Average forgetting (percentage points, max-based, Chaudhry et al. 2018), mean ± sd", "",
              "| method | " + " | ".join(scen) + " |", "|---|" + "---|" * len(scen)]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(cells.get((FORG, label, s), "–") for s in scen) + " |")
    return "\n".join(lines)


def write_into(path: Path, text: str, produced: str) -> None:
    """Replace what lies between the markers of ``path`` (or create it with just the tables)."""
    block = f"{BEGIN}\n\n{produced}\n\n{text}\n\n{END}"
    old = path.read_text() if path.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(new)


def produced_line(old_block: str, command: str, full: bool) -> str:
    """'Produced by `...`.', with the partial re-measurements that followed appended."""
    if full:
        return f"Produced by `{command}`."
    prev = next((line for line in old_block.splitlines() if line.startswith("Produced by")), "Produced by (unknown).")
    return prev.rstrip(".") + f"; then re-measured, only the cells it covers: `{command}`."


def main(argv=None) -> int:
    args = parse_args(argv)
    items = configs(args)
    t0 = time.perf_counter()
    out = []
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            for r in pool.map(run_one, items):
                out.append(r)
                print(f"{r['scenario']:6} {r['row']:30} seed {r['seed']}  {r['average_accuracy']:5.1f}%  "
                      f"{r['status']} {r['seconds']:.1f}s", flush=True)
    else:
        for item in items:
            r = run_one(item)
            out.append(r)
            print(f"{r['scenario']:6} {r['row']:30} seed {r['seed']}  {r['average_accuracy']:5.1f}%  "
                  f"{r['status']} {r['seconds']:.1f}s", flush=True)
    results = pd.DataFrame(out)
    print(f"{len(out)} runs in {time.perf_counter() - t0:.0f} s")
    defaults = [("--seeds", args.seeds, [0, 1, 2]), ("--hidden", args.hidden, [400, 400]), ("--epochs", args.epochs, 4),
                ("--batch-size", args.batch_size, 32), ("--lr", args.lr, 1e-3), ("--scenarios", args.scenarios, SCENARIOS)]
    command = "python benchmarks/split_mnist_methods.py" + "".join(
        f" {flag} {' '.join(map(str, v)) if isinstance(v, list) else v}" for flag, v, default in defaults if v != default)
    if args.rows is not None:
        command += " --rows " + " ".join(f"'{r}'" if " " in r else r for r in args.rows)
    full = args.rows is None and args.scenarios == SCENARIOS
    path = Path(args.output)
    old = path.read_text() if path.exists() else ""
    old_block = old[old.index(BEGIN): old.index(END)] if BEGIN in old and END in old else ""
    cells = cells_of(results) if full or not args.update else {**cells_in(old_block), **cells_of(results)}
    text = tables(cells, args.seeds)
    print(text)
    if full or args.update:
        write_into(path, text, produced_line(old_block, command, full))
    return 0


if __name__ == "__main__":
    sys.exit(main())
