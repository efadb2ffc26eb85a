"""How fast a command starts, against `python -c "import torch"` (issue #15's fast-start goals).

    python benchmarks/startup.py [--repeats 5]

Times three commands as fresh processes, interleaved over the repeats (a busy moment hits all
alike), and prints each one's median wall time and its ratio to importing torch:
- `python -c "import torch"`: the floor of any PyTorch program;
- `import torch` and making one `torch.optim.Adam`: the floor of any PyTorch training program (the
  optimiser's constructor imports TorchDynamo, about a second);
- `python -m forgetting.run --help` (goal: <= 1.3x);
- `python -m forgetting.run` on the default (split-digits, an MLP, kl; a new results directory
  each time so nothing is read back; goal: <= 2x);
- the same run through `main(sys.argv[1:])` called from `python -c`: the same code, but the process is not
  the command's, so its garbage collector is not frozen after the imports and at exit
  (`forgetting/gc_freeze.py`): what the freezing saves.
Run it on a quiet machine: the ratios are the figures, the seconds depend on the machine. CPU seconds
(the child's user + system time) are printed beside the wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
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
        "the same, collector not frozen": [py, "-c", "import sys; from forgetting.cli import main; "
                                           "sys.exit(main(sys.argv[1:]))", "--results-dir", str(tmp / "results")],
    }


def cpu_of_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def once(cmd: list[str], tmp: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``cmd``; the default run gets an empty results dir each time."""
    shutil.rmtree(tmp / "results", ignore_errors=True)
    t, cpu = time.perf_counter(), cpu_of_children()
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall, cpu = time.perf_counter() - t, cpu_of_children() - cpu
    if done.returncode != 0:
        sys.exit(f"startup.py: {' '.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return wall, cpu


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
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
        for _ in range(a.repeats):
            for name, cmd in cmds.items():
                times[name].append(once(cmd, tmp))
    med = {name: statistics.median(w for w, _ in ts) for name, ts in times.items()}
    cpu = {name: statistics.median(c for _, c in ts) for name, ts in times.items()}
    floor = med["import torch"]
    goals = {"forgetting.run --help": 1.3, "forgetting.run (default run)": 2.0}
    print(f"{'command':32s} {'median s':>9s} {'/ import torch':>15s} {'goal':>6s} {'CPU s':>6s}")
    for name, m in med.items():
        goal = f"<= {goals[name]}" if name in goals else ""
        print(f"{name:32s} {m:9.2f} {m / floor:15.2f} {goal:>6s} {cpu[name]:6.2f}")
    run, unfrozen = "forgetting.run (default run)", "the same, collector not frozen"
    print(f"the default run's process with the collector frozen: {med[run] / med[unfrozen]:.2f}x the wall time and "
          f"{cpu[run] / cpu[unfrozen]:.2f}x the CPU time of the same run without")
    print(f"({a.repeats} interleaved rounds, medians; load average before: {load:.1f}, after: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
