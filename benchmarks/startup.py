"""How fast a command starts, against `python -c "import torch"` (issue #15's fast-start goals).

    python benchmarks/startup.py [--repeats 5]

Times three commands as fresh processes, interleaved over the repeats (a busy moment hits all
alike), and prints each one's median wall time and its ratio to importing torch:
- `python -c "import torch"`: the floor of any PyTorch program;
- `import torch` and making one `torch.optim.Adam`: the floor of any PyTorch training program (the
  optimiser's constructor imports TorchDynamo, about a second);
- `python -m forgetting.run --help` (goal: <= 1.3x);
- `python -m forgetting.run` on the default (split-digits, an MLP, kl; a new results directory
  each time so nothing is read back; goal: <= 2x).
Run it on a quiet machine: the ratios are the figures, the seconds depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands(tmp: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "import torch": [py, "-c", "import torch"],
        "import torch + an Adam optimiser": [py, "-c", "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"],
        "forgetting.run --help": [py, "-m", "forgetting.run", "--help"],
        "forgetting.run (default run)": [py, "-m", "forgetting.run", "--results-dir", str(tmp / "results")],
    }


def once(cmd: list[str], tmp: Path) -> float:
    """Wall seconds of one run of ``cmd``; the default run gets an empty results dir each time."""
    shutil.rmtree(tmp / "results", ignore_errors=True)
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"startup.py: {' '.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the median is taken (default 5)")
    a = p.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cmds = commands(tmp)
        for cmd in cmds.values():  # warm the file cache and the bytecode once, untimed
            once(cmd, tmp)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(a.repeats):
            for name, cmd in cmds.items():
                times[name].append(once(cmd, tmp))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    floor = med["import torch"]
    goals = {"forgetting.run --help": 1.3, "forgetting.run (default run)": 2.0}
    print(f"{'command':32s} {'median s':>9s} {'/ import torch':>15s} {'goal':>6s}")
    for name, m in med.items():
        goal = f"<= {goals[name]}" if name in goals else ""
        print(f"{name:32s} {m:9.2f} {m / floor:15.2f} {goal:>6s}")
    print(f"({a.repeats} interleaved rounds, medians; load average before: {load:.1f}, after: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
