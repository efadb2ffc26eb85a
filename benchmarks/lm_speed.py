"""Speed of a causal LM in the harness: training tokens per second for naive and kl, beside a hand-written loop.

The hand-written loop is what one would write with ``transformers`` alone: the same GPT-2, the
same batches (padded the same way), ``model(**batch).loss``, Adam. The harness's naive run
should be close to it (goal: within 1.15x), and kl, which adds the frozen reference's logits
(from the teacher cache, or a forward pass of the reference) and the token-level KL over the
vocabulary at every loss-carrying token, within 1.3x of naive. Only optimisation steps are
timed (forward, penalty, backward, step), on fine-tuning task 1 (yelp) after the base task.
Tokens are the tokens that carry loss. Run it on a quiet machine; the load average is printed::

    python benchmarks/lm_speed.py --data-dir ../shared/data
    python benchmarks/lm_speed.py --threads 1 --train-per-task 200 --lm-task completion
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

from machine_load import load_after  # benchmarks/, beside this script

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forgetting.registry import make_config  # noqa: E402
from forgetting.run import prepare  # noqa: E402
from forgetting.streams import default_data_dir, iterate_batches  # noqa: E402
from forgetting.train import Trainer  # noqa: E402


class TimedTrainer(Trainer):
    """The one loop with its optimisation steps timed (evaluation left out of the figures)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timing = False
        self.train_s, self.tokens = 0.0, 0

    def step(self, batch, t, epoch):
        start = time.perf_counter()
        parts = super().step(batch, t, epoch)
        if self.timing:
            self.train_s += time.perf_counter() - start
            self.tokens += int((batch.inputs["labels"][:, 1:] != -100).sum())
        return parts

    def record(self, phase, t, epoch, train_loss):
        return []  # no evaluation: this benchmark times training


def hand_loop(lm, data, batch_size: int, lr: float, epochs: int, seed: int) -> tuple[float, int]:
    """Plain transformers fine-tuning on the same batches: (seconds in steps, tokens)."""
    opt = torch.optim.Adam(lm.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    lm.train()
    seconds, tokens = 0.0, 0
    for _ in range(epochs):
        for batch in iterate_batches(data, 1, batch_size, shuffle=True, generator=gen):
            start = time.perf_counter()
            loss = lm(**batch.inputs).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seconds += time.perf_counter() - start
            tokens += int((batch.inputs["labels"][:, 1:] != -100).sum())
    return seconds, tokens


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--model", default="gpt2", help="gpt2 (from scratch) or causal:PATH")
    p.add_argument("--lm-task", default="lm", choices=["lm", "completion"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--train-per-task", type=int, default=400)
    p.add_argument("--teacher-cache", default="true", choices=["true", "false"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"uci-sentiment ({args.lm_task}), {args.model}, max length {args.max_seq_len}, {args.train_per_task} "
          f"training texts per task, {args.epochs} epoch(s), batch {args.batch_size}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    results = {}
    start_model = None
    for method, hparams in (("naive", {}), ("kl", {"kl_lambda": 1.0, "teacher_cache": args.teacher_cache == "true"})):
        config = make_config(benchmark="uci-sentiment", scenario="domain", model=args.model, method=method,
                             hparams=hparams, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=0,
                             stream_options={"max_seq_len": args.max_seq_len,
                                             "text_train_per_task": args.train_per_task},
                             model_options={"lm_task": args.lm_task},
                             device="cpu", data_dir=args.data_dir, results_dir="/nonexistent", progress=False)
        device, stream, net, methods = prepare(config)
        trainer = TimedTrainer(config, stream, net, methods, device)
        trainer.train_task(0)
        if start_model is None:
            start_model = copy.deepcopy(trainer.model.lm)
        trainer.timing = True
        trainer.train_task(1)
        results[method] = trainer.tokens / trainer.train_s
    seconds, tokens = hand_loop(start_model, stream.tasks[1].train, args.batch_size, args.lr, args.epochs, seed=0)
    results["hand loop"] = tokens / seconds
    print(f"{'loop':<12}{'tokens/s':>10}{'vs hand loop':>14}{'vs naive':>10}")
    for name in ("hand loop", "naive", "kl"):
        print(f"{name:<12}{results[name]:10.0f}{results['hand loop'] / results[name]:13.2f}x"
              f"{results['naive'] / results[name]:9.2f}x")
    print(f"time per token: kl / naive {results['naive'] / results['kl']:.2f}x (goal <= 1.3x), naive / hand loop "
          f"{results['hand loop'] / results['naive']:.2f}x (goal <= 1.15x)")
    print(load_after())
    return 0


if __name__ == "__main__":
    sys.exit(main())
