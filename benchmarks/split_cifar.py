"""Split CIFAR-10 with a reduced ResNet-18: naive, kl, LwF, EWC, replay, DER and joint, class-IL and task-IL,
over seeds, beside Mammoth's published figures (Buzzega et al. 2020): the table in split_cifar.md.

    python benchmarks/split_cifar.py --data-dir DIR               # GPU: full data, minutes per run
    python benchmarks/split_cifar.py --data-dir DIR --workers 4   # several runs at once on one GPU
    python benchmarks/split_cifar.py --data-dir DIR --tiny        # 2 CPU cores: a small subset, few epochs

DIR holds ``cifar-10-batches-py`` (or pass ``--download``). Runs go through ``run_experiment`` into
``--results-dir`` (one directory per run id), so an interrupted study resumes and a finished one only
re-renders the table. The recipe (SGD 0.03, batch 32, crop+flip augmentation, buffers of 200) is
Mammoth's for split CIFAR-10, with far fewer epochs (Mammoth: 50 per task) and GEM's narrower network
(20 channels, Mammoth: 64) so that it runs in minutes: expect lower accuracies than the published ones.
``--tiny`` keeps 50 training images per class, evaluates on 200 test images per task, trains 2 epochs
per task, and is a smoke test of the study, not a result.
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

from forgetting.metrics import run_summary  # noqa: E402
from forgetting.registry import make_config  # noqa: E402
from forgetting.run import run_experiment  # noqa: E402
from forgetting.streams import default_data_dir  # noqa: E402

# (row label, --method, options other than the defaults)
ROWS = [
    ("naive", "naive", {}),
    ("kl", "kl", {}),
    ("LwF (kl, T=2)", "kl", {"temperature": 2.0}),
    ("ewc", "ewc", {"ewc_lambda": 10.0}),  # Mammoth's oEWC lambda on split CIFAR-10
    ("replay (200)", "replay", {"replay_size": 200}),
    ("der (200)", "der", {"der_size": 200, "der_alpha": 0.3}),
    ("der++ (200)", "der", {"der_size": 200, "der_alpha": 0.1, "der_beta": 0.5}),
    ("joint", "joint", {}),
]
SCENARIOS = ["class", "task"]

# Buzzega et al. 2020 (Mammoth), Table 2, split CIFAR-10, accuracy (%) after the last task, class-IL / task-IL:
# ResNet-18 (64 channels), SGD, batch 32, 50 epochs per task, crop + flip, buffers of 200 examples.
PUBLISHED = {
    "naive": ("SGD", 19.62, 61.02),
    "LwF (kl, T=2)": ("LwF", 19.61, 63.29),
    "ewc": ("oEWC", 19.49, 68.29),
    "replay (200)": ("ER", 44.79, 91.19),
    "der (200)": ("DER", 61.93, 91.40),
    "der++ (200)": ("DER++", 64.88, 91.92),
    "joint": ("JOINT", 92.20, 98.31),
}

FULL = {"epochs": 5, "train_per_class": 0, "eval_subset": 0, "resnet_width": 20}
TINY = {"epochs": 2, "train_per_class": 50, "eval_subset": 200, "resnet_width": 8}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=default_data_dir(), help="holds cifar-10-batches-py/")
    p.add_argument("--download", action="store_true", help="fetch CIFAR-10 into --data-dir first (needs a network)")
    p.add_argument("--trust-data", action="store_true", help="read CIFAR files that are not the official ones "
                   "(your own variant; they are pickles, which can run code when read)")
    p.add_argument("--results-dir", default=None, help="default: results/split_cifar (results/split_cifar_tiny)")
    p.add_argument("--output", default=None, help="markdown file the tables go into (default: benchmarks/"
                   "split_cifar.md, or split_cifar_tiny.md with --tiny)")
    p.add_argument("--tiny", action="store_true", help="a CPU-sized smoke version: " + ", ".join(
        f"{k}={v}" for k, v in TINY.items()))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--scenarios", nargs="+", default=SCENARIOS, choices=SCENARIOS)
    p.add_argument("--rows", nargs="+", default=None, help="row labels to run (default: all)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per task (default: 5, --tiny: 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=1, help="parallel runs (1: one after the other)")
    args = p.parse_args(argv)
    size = TINY if args.tiny else FULL
    args.size = {**size, **({"epochs": args.epochs} if args.epochs else {})}
    name = "split_cifar_tiny" if args.tiny else "split_cifar"
    args.results_dir = args.results_dir or str(ROOT / "results" / name)
    args.output = args.output or str(ROOT / "benchmarks" / f"{name}.md")
    return args


def configs(args) -> list[tuple[str, object]]:
    rows = [r for r in ROWS if args.rows is None or r[0] in args.rows]
    s = args.size
    out = []
    for scenario in args.scenarios:
        for label, method, options in rows:
            for seed in args.seeds:
                out.append((label, make_config(
                    benchmark="split-cifar10", scenario=scenario, model="resnet18", method=method,
                    resnet_width=s["resnet_width"], augment=True, train_per_class=s["train_per_class"],
                    download=args.download, trust_data=args.trust_data, optimizer="sgd", lr=0.03, batch_size=32,
                    epochs=s["epochs"],
                    eval_subset=s["eval_subset"], eval_batch_size=256, seed=seed, device=args.device,
                    data_dir=args.data_dir, results_dir=args.results_dir, progress=False, **options)))
    return out


def run_one(item) -> dict:
    import torch

    torch.set_num_threads(1)
    from forgetting.errors import RunFailed

    label, config = item
    t0 = time.perf_counter()
    try:
        _, rows, status = run_experiment(config)
    except RunFailed as e:  # a diverging run is a row of the table, not the end of the study
        print(f"run {config.run_id} ({label}, {config.scenario}, seed {config.seed}) failed: {e}", flush=True)
        return {"row": label, "scenario": config.scenario, "seed": config.seed, "status": "failed",
                "seconds": time.perf_counter() - t0, "average_accuracy": float("nan"), "forgetting_max": float("nan")}
    s = run_summary(rows)
    return {"row": label, "scenario": config.scenario, "seed": config.seed, "status": status,
            "seconds": time.perf_counter() - t0, "average_accuracy": 100 * s["average_accuracy"],
            "forgetting_max": 100 * s["forgetting_max"]}


def cell(values: pd.Series) -> str:
    return f"{values.mean():.1f} ± {values.std(ddof=0):.1f}" if len(values) else ""


def tables(results: pd.DataFrame, args) -> str:
    labels = [r[0] for r in ROWS if r[0] in set(results["row"])]
    scen = [s for s in SCENARIOS if s in set(results["scenario"])]
    seeds = ", ".join(map(str, args.seeds))
    lines = [f"### Average accuracy (%) over the 5 tasks after the last, mean ± sd over seeds {seeds}", "",
             "| method | " + " | ".join(f"{s}-IL (ours)" for s in scen) + " | Mammoth, published (class-IL / task-IL) |",
             "|---|" + "---|" * len(scen) + "---|"]
    for label in labels:
        r = results[results["row"] == label]
        pub = PUBLISHED.get(label)
        pub_txt = f"{pub[0]}: {pub[1]:.2f} / {pub[2]:.2f}" if pub else ""
        lines.append(f"| {label} | " + " | ".join(cell(r[r["scenario"] == s]["average_accuracy"]) for s in scen)
                     + f" | {pub_txt} |")
    lines += ["", "### Average forgetting (percentage points, max-based), mean ± sd", "",
              "| method | " + " | ".join(f"{s}-IL" for s in scen) + " |", "|---|" + "---|" * len(scen)]
    for label in labels:
        r = results[results["row"] == label]
        lines.append(f"| {label} | " + " | ".join(cell(r[r["scenario"] == s]["forgetting_max"]) for s in scen) + " |")
    return "\n".join(lines)


def write_into(path: Path, text: str, command: str) -> None:
    """Replace what lies between the markers of ``path`` (or create it with just the tables)."""
    begin, end = "<!-- BEGIN TABLES (written by benchmarks/split_cifar.py) -->", "<!-- END TABLES -->"
    block = f"{begin}\n\nProduced by `{command}`.\n\n{text}\n\n{end}"
    old = path.read_text() if path.exists() else f"{begin}\n{end}\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(new)


def main(argv=None) -> int:
    args = parse_args(argv)
    items = configs(args)
    t0 = time.perf_counter()
    out = []

    def show(r):
        out.append(r)
        print(f"{r['scenario']:6} {r['row']:16} seed {r['seed']}  {r['average_accuracy']:5.1f}%  "
              f"{r['status']} {r['seconds']:.1f}s", flush=True)

    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            for r in pool.map(run_one, items):
                show(r)
    else:
        for item in items:
            show(run_one(item))
    results = pd.DataFrame(out)
    print(f"{len(out)} runs in {time.perf_counter() - t0:.0f} s")
    command = "python benchmarks/split_cifar.py" + (" --tiny" if args.tiny else "") + (
        f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0, 1, 2] else "") + (
        f" --epochs {args.size['epochs']}" if args.epochs else "")
    text = tables(results, args)
    print(text)
    if args.rows is None and args.scenarios == SCENARIOS:
        write_into(Path(args.output), text, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
