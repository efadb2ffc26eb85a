"""What the KL penalty costs over plain fine-tuning, and what evaluation costs, measured in one run.

    python benchmarks/speed.py [--data-dir DIR] [--repeats 5] [--text]

Prints, for the MLP on split-MNIST (and with --text for a small BERT on uci-sentiment):
- the mean epoch time of fine-tuning on task 1 for the run's epochs (evaluation excluded; the
  teacher cache built once at the task boundary, as in a run) of `kl` with the cache, of `kl`
  without it, and of `naive`, and the ratios kl/naive (goal with the cache: <= 1.05);
- the share of a default run's wall time spent in evaluation (goal: <= 15%).
Epoch timings are interleaved over the methods and the median over repeats is taken, so a busy
moment hits all methods alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataclasses import replace  # noqa: E402

from forgetting.config import Component, RunConfig  # noqa: E402
from forgetting.registry import make_config, resolve  # noqa: E402
from forgetting.evaluate import Evaluator  # noqa: E402
from forgetting.registry import build_methods  # noqa: E402
from forgetting.run import prepare, run_experiment  # noqa: E402
from forgetting.streams import default_data_dir  # noqa: E402
from forgetting.train import Trainer  # noqa: E402

KL = {"kl_lambda": 1.0, "kl_direction": "forward", "temperature": 1.0}


def trainers(base: RunConfig):
    """Three trainers that share the same task-0 model: naive, kl with cache, kl without."""
    device, stream, model, _ = prepare(base)
    first = Trainer(base, stream, model, build_methods("naive", {}), device)
    first.train_task(0)
    out = {}
    for label, method, hp in [("naive", "naive", {}), ("kl (cache)", "kl", {**KL, "teacher_cache": True}),
                              ("kl (no cache)", "kl", {**KL, "teacher_cache": False})]:
        cfg = resolve(replace(base, method=Component(method, hp)))
        import copy

        tr = Trainer(cfg, stream, copy.deepcopy(first.model), build_methods(method, cfg.hparams), device)
        tr.previous_model = first.previous_model
        tr.base_model = first.base_model
        out[label] = tr
    return out


def epoch_seconds(tr: Trainer, task: int = 1) -> float:
    """Mean epoch time of fine-tuning on ``task`` for the config's epochs, as a run trains it:
    one ``before_task`` (where the teacher cache is built, so its cost counts), then the epochs."""
    tr.optimizer = tr.new_optimizer()
    t0 = time.perf_counter()
    for m in tr.methods:
        m.before_task(tr, task)
    for epoch in range(1, tr.config.epochs + 1):
        for batch in tr._data_method.batches(tr, task, epoch):
            tr.step(batch.to(tr.device), task, epoch)
    return (time.perf_counter() - t0) / tr.config.epochs


def step_costs(base: RunConfig, repeats: int) -> dict[str, float]:
    trs = trainers(base)
    for tr in trs.values():  # warm-up
        epoch_seconds(tr)
    times = {k: [] for k in trs}
    for _ in range(repeats):
        for k, tr in trs.items():
            times[k].append(epoch_seconds(tr))
    return {k: statistics.median(v) for k, v in times.items()}


def eval_share(base: RunConfig, results_dir: str) -> tuple[float, float]:
    """(share of wall time in evaluation, wall time) of a full default run."""
    spent = [0.0]
    original = Evaluator.evaluate

    def timed(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return original(self, *a, **kw)
        finally:
            spent[0] += time.perf_counter() - t0

    Evaluator.evaluate = timed
    try:
        cfg = replace(base, results_dir=results_dir, progress=False)
        t0 = time.perf_counter()
        run_experiment(cfg, force=True)
        wall = time.perf_counter() - t0
    finally:
        Evaluator.evaluate = original
    return spent[0] / wall, wall


def report(name: str, base: RunConfig, repeats: int, results_dir: str) -> None:
    costs = step_costs(base, repeats)
    share, wall = eval_share(base, results_dir)
    print(f"\n{name}")
    for k, v in costs.items():
        print(f"  epoch time {k:<14} {v * 1000:9.1f} ms")
    print(f"  kl (cache) / naive      {costs['kl (cache)'] / costs['naive']:.3f}   (goal <= 1.05)")
    print(f"  kl (no cache) / naive   {costs['kl (no cache)'] / costs['naive']:.3f}")
    print(f"  evaluation share of a default run: {100 * share:.1f}% of {wall:.1f} s   (goal <= 15%)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--results-dir", default="/tmp/forgetting-speed")
    p.add_argument("--text", action="store_true", help="also the small BERT on uci-sentiment")
    a = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    mlp = make_config(benchmark="split-mnist", scenario="domain", data_dir=a.data_dir, batch_size=128, epochs=2,
                    method="kl", hparams=KL, progress=False)
    report("MLP 784-400-400 on split-MNIST (domain), batch 128", mlp, a.repeats, a.results_dir)
    if a.text:
        bert = make_config(benchmark="uci-sentiment", scenario="domain", model="bert", data_dir=a.data_dir,
                         batch_size=32, epochs=2, method="kl", hparams=KL, progress=False,
                         stream_options={"max_seq_len": 64})
        report("small BERT (4 layers, hidden 256, from scratch) on uci-sentiment (domain), max length 64, "
               "800 train / 200 test sentences per task, batch 32, 2 epochs", bert, a.repeats, a.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
