"""Speed of our loop against Avalanche's on the same stream, model, epochs and batch size.

    python benchmarks/vs_avalanche.py [--epochs 2] [--repeats 3] [--threads 1] [--data-dir ../shared/data]

Pairs, each timed side by side in this one process: our ``kl`` against ``avalanche-lwf`` (the
same penalty strength: alpha = kl_lambda * T^2, T = 2), our ``naive`` against ``avalanche-naive``,
on split-digits and split-MNIST (domain-incremental, MLP 400-400). The time is ``fit()``:
training plus the same evaluation of every task after every epoch (our Evaluator in both), no
file writing. Each pair runs alternately ``--repeats`` times after one warm-up run each; the
median is reported, and the ratio Avalanche / ours (above 1: Avalanche is slower).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forgetting.integrations.avalanche import AvalancheTrainer  # noqa: E402  (imports Avalanche once, untimed)
from forgetting.metrics import run_summary  # noqa: E402
from forgetting.run import build_parser, config_from_args, prepare  # noqa: E402
from forgetting.train import Trainer  # noqa: E402

PAIRS = [
    (["--method", "kl", "--kl-lambda", "1", "--temperature", "2"],
     ["--method", "avalanche-lwf", "--av-lwf-alpha", "4", "--av-lwf-temperature", "2"]),
    (["--method", "naive"], ["--method", "avalanche-naive"]),
]


class Rows:
    """A recorder that keeps the rows in memory (no files), for the accuracy shown beside the time."""

    def __init__(self):
        self.rows = []

    def elapsed(self) -> float:
        return 0.0

    def add_rows(self, rows) -> None:
        self.rows.extend(rows)

    def add_losses(self, step: int, parts: dict) -> None:
        pass

    def task_done(self, trainer, task) -> None:
        pass


def timed_run(argv: list[str]) -> tuple[float, float]:
    """Seconds of ``fit()`` and the final average accuracy."""
    import pandas as pd

    config = config_from_args(build_parser().parse_args(argv))
    device, stream, model, methods = prepare(config)
    cls = AvalancheTrainer if config.method.name.startswith("avalanche-") else Trainer
    rows = Rows()
    trainer = cls(config, stream, model, methods, device, recorder=rows)
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0
    return seconds, run_summary(pd.DataFrame(rows.rows))["average_accuracy"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--data-dir", default=None, help="holding mnist/ (default: $FORGETTING_DATA_DIR or ../shared/data)")
    p.add_argument("--benchmarks", nargs="+", default=["split-digits", "split-mnist"])
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    common = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--quiet", "--device", "cpu"]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, epochs {args.epochs}, "
          f"batch {args.batch_size}, median of {args.repeats}")
    print(f"{'benchmark':<13} {'ours':<7} {'avalanche':<16} {'ours s':>8} {'aval. s':>8} {'ratio':>6} "
          f"{'ours acc':>9} {'aval. acc':>9}")
    for bench in args.benchmarks:
        for ours, theirs in PAIRS:
            a, b = ["--benchmark", bench, *common, *ours], ["--benchmark", bench, *common, *theirs]
            try:
                timed_run(a), timed_run(b)  # warm-up: data loading caches, first-call costs
            except Exception as e:  # e.g. no MNIST files: say so and go on
                print(f"{bench:<13} skipped: {type(e).__name__}: {e}")
                break
            times_a, times_b, acc_a, acc_b = [], [], 0.0, 0.0
            for _ in range(args.repeats):
                (ta, acc_a), (tb, acc_b) = timed_run(a), timed_run(b)
                times_a.append(ta)
                times_b.append(tb)
            ma, mb = statistics.median(times_a), statistics.median(times_b)
            print(f"{bench:<13} {ours[1]:<7} {theirs[1]:<16} {ma:8.2f} {mb:8.2f} {mb / ma:6.2f} "
                  f"{100 * acc_a:8.1f}% {100 * acc_b:8.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
