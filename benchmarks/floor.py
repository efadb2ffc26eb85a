"""How close our loop runs to a hand-written PyTorch loop, and how far Avalanche's runs, in one process.

    python benchmarks/floor.py [--repeats 3] [--threads 2] [--data-dir ../shared/data]
    python benchmarks/floor.py --profile ours-kl      # where a variant's time goes (cProfile)
    python benchmarks/floor.py --threads 1 --cpu-time  # CPU seconds instead of wall time (a shared machine)

The setting (issue #15): split-MNIST from the 10,000 test images (8,000 training and 2,000 test
images, 5 tasks of 2 digits), class-incremental with one 10-way head, MLP 784-400-400-10 without
dropout, 4 epochs a task, batch 128, Adam 1e-3 (a fresh one per task), every task evaluated
after every epoch. The variants, each a whole 5-task run from the images in memory to the end:

- ``hand``: a hand-written loop (model, Adam, shuffled batches, cross-entropy, evaluation of
  each task's test set in one forward pass under inference_mode): the floor;
- ``hand-kl``: the same with a live frozen teacher and the KL penalty on the old classes;
- ``ours-naive``, ``ours-kl``: ``run_experiment`` as the CLI runs it (results files, task-boundary
  checkpoints, the teacher cache on), the stream built from the same images;
- ``avalanche-naive``, ``avalanche-lwf``: Avalanche's Naive and LwF (alpha 1, temperature 1: our
  kl's strength) on the same tensors, evaluating the test stream after every epoch (accuracy only).

The variants run interleaved, ``--repeats`` rounds after one warm-up round, and the median of each
is reported with its ratio to the floor; so a busy moment hits every variant alike. The load
average is printed before and after: above the number of CPUs, the figures are not final.
``--cpu-time`` times the CPU seconds of this process instead (``time.process_time``): with one thread
it barely moves with other processes' load, but it leaves out what a run waits for (disk syncs).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine_load import load_after  # benchmarks/, beside this script

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forgetting.registry import make_config  # noqa: E402
from forgetting.run import run_experiment  # noqa: E402
from forgetting.streams import build_stream, default_data_dir  # noqa: E402
from forgetting.streams import mnist as mnist_stream  # noqa: E402

EPOCHS, BATCH, LR, HIDDEN = 4, 128, 1e-3, (400, 400)
VARIANTS = ("hand", "hand-kl", "ours-naive", "ours-kl", "avalanche-naive", "avalanche-lwf")


def cache_images() -> None:
    """Read the IDX files once: every variant starts from the images in memory."""
    load = mnist_stream.load_arrays
    cached = {}

    def load_arrays(data_dir, download=False):
        if data_dir not in cached:
            cached[data_dir] = load(data_dir, download)
        return cached[data_dir]

    mnist_stream.load_arrays = load_arrays


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, HIDDEN[0]), nn.ReLU(), nn.Linear(HIDDEN[0], HIDDEN[1]), nn.ReLU(),
                         nn.Linear(HIDDEN[1], 10))


def hand_written(data_dir: str, seed: int, kl: bool) -> float:
    """The floor: the loop a PyTorch user writes by hand. Returns the final average accuracy."""
    stream = build_stream("split-mnist", "class", {"data_dir": data_dir})
    tasks = [(t.train.inputs, t.train.targets, t.test.inputs, t.test.targets) for t in stream.tasks]
    model = mlp(seed)
    g = torch.Generator().manual_seed(seed)
    accs: list[float] = []
    for t, (x, y, _, _) in enumerate(tasks):
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        teacher, old = None, 2 * t  # classes 0 .. 2t-1 are the old ones
        if kl and t > 0:
            teacher = copy.deepcopy(model).eval().requires_grad_(False)
        for _ in range(EPOCHS):
            model.train()
            perm = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), BATCH):
                idx = perm[i:i + BATCH]
                xb, yb = x[idx], y[idx]
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                if teacher is not None:
                    with torch.no_grad():
                        old_logits = teacher(xb)[:, :old]
                    loss = loss + F.kl_div(F.log_softmax(logits[:, :old], 1), F.log_softmax(old_logits, 1),
                                           reduction="batchmean", log_target=True)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            model.eval()
            with torch.inference_mode():
                accs = [float((model(xt).argmax(1) == yt).float().mean()) for _, _, xt, yt in tasks]
    return sum(accs) / len(accs)


def ours(data_dir: str, seed: int, method: str, results_dir: str) -> float:
    """``run_experiment`` as ``python -m forgetting.run`` calls it."""
    # the hand-written loop's computation: every output in the loss and evaluation, the KL on the old classes
    hparams = {"kl_lambda": 1.0, "kl_direction": "forward", "temperature": 1.0, "kl_class_outputs": "old"} \
        if method == "kl" else {}
    config = make_config(benchmark="split-mnist", scenario="class", class_outputs="all", method=method, hparams=hparams,
                       model_options={"hidden": list(HIDDEN), "dropout": 0.0}, epochs=EPOCHS, batch_size=BATCH,
                       lr=LR, seed=seed, device="cpu", data_dir=data_dir, results_dir=results_dir, progress=False)
    _, rows, _ = run_experiment(config, force=True)
    last = rows[(rows.phase == "epoch") & (rows.trained_task == rows.trained_task.max()) & (rows.epoch == EPOCHS)]
    return float(last.accuracy.mean())


def avalanche(data_dir: str, seed: int, method: str) -> float:
    """Avalanche's own strategy and evaluation, as an Avalanche user writes them, on the same tensors."""
    import warnings

    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import LwF, Naive
    from avalanche.training.plugins import EvaluationPlugin

    from forgetting.integrations.avalanche import to_avalanche_benchmark

    bm = to_avalanche_benchmark(build_stream("split-mnist", "class", {"data_dir": data_dir}))
    model = mlp(seed)
    cls, extra = (Naive, {}) if method == "naive" else (LwF, {"alpha": 1.0, "temperature": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy = cls(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=LR),
                       criterion=nn.CrossEntropyLoss(), train_mb_size=BATCH, train_epochs=EPOCHS, eval_mb_size=1024,
                       device="cpu", evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]),
                       eval_every=1, **extra)
        for exp in bm.train_stream:
            strategy.train(exp, eval_streams=[bm.test_stream])
        metrics = strategy.evaluator.get_last_metrics()
    accs = [v for k, v in metrics.items() if k.startswith("Top1_Acc_Exp/eval_phase/test_stream")]
    return sum(accs) / max(len(accs), 1)


def runner(name: str, data_dir: str, results_dir: str):
    return {
        "hand": lambda s: hand_written(data_dir, s, kl=False),
        "hand-kl": lambda s: hand_written(data_dir, s, kl=True),
        "ours-naive": lambda s: ours(data_dir, s, "naive", results_dir),
        "ours-kl": lambda s: ours(data_dir, s, "kl", results_dir),
        "avalanche-naive": lambda s: avalanche(data_dir, s, "naive"),
        "avalanche-lwf": lambda s: avalanche(data_dir, s, "lwf"),
    }[name]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=default_data_dir(), help="holding mnist/ (default: $FORGETTING_DATA_DIR or ../shared/data)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--profile", choices=VARIANTS, help="profile one run of this variant with cProfile instead")
    p.add_argument("--cpu-time", action="store_true", help="time this process's CPU seconds, not wall time")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cache_images()
    results = tempfile.mkdtemp(prefix="forgetting-floor-")
    print(f"split-MNIST class-incremental, MLP 784-400-400-10, {EPOCHS} epochs a task, batch {BATCH}, Adam {LR}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if a.profile:
        run = runner(a.profile, a.data_dir, results)
        run(0)  # warm-up: first-call costs (imports, allocator) are not the loop's
        prof = cProfile.Profile()
        start = time.perf_counter()
        prof.runcall(run, 0)
        print(f"{a.profile}: {time.perf_counter() - start:.2f} s under the profiler")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    times: dict[str, list[float]] = {v: [] for v in a.variants}
    accs: dict[str, float] = {}
    for r in range(a.repeats + 1):  # round 0 is the warm-up
        for v in a.variants:
            clock = time.process_time if a.cpu_time else time.perf_counter
            start = clock()
            accs[v] = runner(v, a.data_dir, results)(0)
            if r:
                times[v].append(clock() - start)
    med = {v: statistics.median(t) for v, t in times.items()}
    floor = med.get("hand")
    print(f"{'variant':<17}{'median s':>10}{'/ floor':>9}{'final avg acc':>15}   ({'CPU' if a.cpu_time else 'wall'} times: {a.repeats} rounds)")
    for v in a.variants:
        ratio = f"{med[v] / floor:9.2f}" if floor else f"{'':>9}"
        print(f"{v:<17}{med[v]:10.3f}{ratio}{100 * accs[v]:14.1f}%   " + " ".join(f"{t:.3f}" for t in times[v]))
    pairs = [("ours-naive", "hand", "our naive / the floor (goal <= 1.10)"),
             ("ours-kl", "ours-naive", "our kl / our naive (goal <= 1.03)"),
             ("hand-kl", "hand", "hand-written kl / the floor"),
             ("ours-kl", "hand-kl", "our kl / hand-written kl"),
             ("avalanche-naive", "ours-naive", "Avalanche Naive / our naive"),
             ("avalanche-lwf", "ours-kl", "Avalanche LwF / our kl (goal >= 2.5)")]
    for num, den, label in pairs:
        if num in med and den in med:
            print(f"{label:<40}{med[num] / med[den]:6.2f}")
    print(load_after())
    return 0


if __name__ == "__main__":
    sys.exit(main())
