"""The closing line of every timing benchmark: the load average after it ran, flagged when the figures above
were taken on a busy machine (a load above the CPU count means other work shared the cores: not a figure)."""

from __future__ import annotations

import os


def load_after(extra: str = "") -> str:
    """``load average after: L[ (above the number of CPUs: the figures are not final)][; extra]``."""
    load = os.getloadavg()[0]
    busy = " (above the number of CPUs: the figures are not final)" if load > (os.cpu_count() or 1) else ""
    return f"load average after: {load:.2f}{busy}" + (f"; {extra}" if extra else "")
