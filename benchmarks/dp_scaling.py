"""Data-parallel scaling of the LM study's fine-tuning: tokens per second on 1 and 2 CPU processes, and the
overhead of the distributed path on 1 process, in one run.

The run is the LM study's (benchmarks/lm_study.toml: a 2-layer GPT-2 of width 128 from scratch, uci-sentiment
as language modelling, 100 texts a task, length 64, global batch 8), method ``kl`` (``--method``); task 0 is
trained untimed, then the optimisation steps of fine-tuning task 1 (yelp) are timed: forward, penalty,
backward, the ranks' gradient all-reduce, step. Tokens are those that carry loss in the *global* batch.

- ``1 process``: the plain loop (no launcher: no shard, no collective);
- ``1 process, distributed path``: the same process through the launched code path (a 1-rank gloo group:
  the batch split into its one shard, the share weighting, the flat-buffer all-reduce of the gradients and
  of the reported losses). Its slowdown over the plain loop is the path's overhead (goal: <= 5 %);
- ``2 processes``: ``accelerate launch --num_processes 2`` of this script's worker (gloo), each rank on its
  half of every global batch; tokens/s of the global batches. On 2 cores expect < 2x (the all-reduce of
  the model's gradients and the ranks' shared memory bandwidth are paid per step).

Every process runs ``--threads`` torch threads (default 1, so 2 processes use 2 cores where 1 uses one).
1-process modes alternate over ``--repeats`` and the medians are printed. Run it on a quiet machine (the load
average is printed before and after)::

    python benchmarks/dp_scaling.py --data-dir ../shared/data
    python benchmarks/dp_scaling.py --data-dir ../shared/data --epochs 1 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_load import load_after  # benchmarks/, beside this script

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forgetting import distributed  # noqa: E402
from forgetting.distributed import World  # noqa: E402
from forgetting.registry import make_config  # noqa: E402
from forgetting.run import prepare  # noqa: E402
from forgetting.streams import default_data_dir  # noqa: E402
from forgetting.train import Trainer  # noqa: E402


class TimedTrainer(Trainer):
    """The one loop with its optimisation steps timed; no evaluation (this benchmark times training)."""

    timing = False
    train_s, tokens = 0.0, 0

    def step(self, batch, t, epoch):
        start = time.perf_counter()
        parts = super().step(batch, t, epoch)
        if self.timing:
            self.train_s += time.perf_counter() - start
            self.tokens += int((batch.inputs["labels"][:, 1:] != -100).sum())  # the global batch's
        return parts

    def record(self, phase, t, epoch, train_loss):
        return []


class OneRankWorld(World):
    """A 1-process group run through the launched path (shard, share, all-reduces) as if it had company."""

    @property
    def distributed(self) -> bool:
        return True


def config_of(args):
    return make_config(benchmark="uci-sentiment", scenario="domain", model="gpt2", method=args.method,
                       hparams={"kl_lambda": 1.0} if args.method == "kl" else {}, epochs=args.epochs,
                       batch_size=8, lr=3e-3, seed=0,
                       stream_options={"max_seq_len": 64, "text_train_per_task": 100, "text_test_per_task": 100},
                       model_options={"gpt2_layers": 2, "gpt2_width": 128, "gpt2_heads": 4},
                       device="cpu", data_dir=args.data_dir, results_dir="/nonexistent", progress=False)


def measure(args, world: World) -> tuple[float, int]:
    """(seconds in the timed steps, global tokens) of fine-tuning task 1 on ``world``."""
    config = config_of(args)
    device, stream, net, methods = prepare(config, torch.device("cpu"))
    trainer = TimedTrainer(config, stream, net, methods, device)
    trainer.world = world
    trainer.train_task(0)
    trainer.timing = True
    trainer.train_task(1)
    return trainer.train_s, trainer.tokens


def worker(args) -> int:
    """One rank of the 2-process launch: rank 0 writes the tokens per second of the global batches."""
    world, _ = distributed.init(torch.device("cpu"))
    seconds, tokens = measure(args, world)
    slowest = max(world.gather_objects([seconds]))
    if world.main:
        Path(args.worker).write_text(json.dumps({"tokens_per_s": tokens / slowest, "ranks": world.size}))
    return 0


def launched(args, n: int) -> float:
    """Tokens/s of ``n`` processes under ``accelerate launch`` (gloo on CPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(port), str(Path(__file__).resolve()), "--worker", str(out), "--data-dir", str(args.data_dir),
               "--epochs", str(args.epochs), "--method", args.method, "--threads", str(args.threads)]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(args.threads),
               "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the {n}-process launch failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())["tokens_per_s"]


def one_rank_group():
    """A gloo group of this process alone, for the distributed path on 1 process."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return OneRankWorld(rank=0, size=1, backend="gloo")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--method", default="kl", choices=["naive", "kl"])
    p.add_argument("--epochs", type=int, default=3, help="epochs per task (task 1's are timed)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats of the 1-process modes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)  # a rank of the launch: where to write
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)
    began = time.perf_counter()
    print(f"LM study fine-tuning (task 1, yelp), {args.method}, {args.epochs} epoch(s) a task, global batch 8; "
          f"torch {torch.__version__}, {args.threads} thread(s) per process, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}")
    group = one_rank_group()
    plain, path = [], []
    for _ in range(args.repeats):
        seconds, tokens = measure(args, distributed.SINGLE)
        plain.append(tokens / seconds)
        seconds, tokens = measure(args, group)
        path.append(tokens / seconds)
    one, one_path = statistics.median(plain), statistics.median(path)
    two = launched(args, 2)
    print(f"{'mode':<34}{'tokens/s':>10}{'vs 1 process':>14}")
    print(f"{'1 process':<34}{one:10.0f}{1.0:13.2f}x")
    print(f"{'1 process, distributed path':<34}{one_path:10.0f}{one_path / one:13.2f}x")
    print(f"{'2 processes (accelerate, gloo)':<34}{two:10.0f}{two / one:13.2f}x")
    print(f"distributed path's overhead on 1 process: {100 * (one / one_path - 1):+.1f} % (goal <= 5 %); "
          f"2-process speed-up {two / one:.2f}x")
    print(load_after(f"took {time.perf_counter() - began:.0f} s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
