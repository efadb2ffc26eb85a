"""Progress that reads well everywhere: tqdm bars in a terminal, plain lines anywhere else.

When stderr is not a terminal (a log file, CI, a cluster job's output) a bar's carriage-return
updates become thousands of lines of noise; there a bar says once what it counts, and the run
writes one line per evaluation (and the sweep one per finished run) instead.
"""

from __future__ import annotations

import math
import sys
from typing import Iterable, Sequence

PREFIX = "[forgetting]"


def is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def say(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


class Lines:
    """The part of tqdm's interface the loops use, as whole lines: one at the start, one per ``update``
    when ``per_update`` (a sweep's finished runs), none per training step."""

    def __init__(self, total: int, desc: str, unit: str, per_update: bool):
        self.total, self.desc, self.unit, self.per_update = total, desc, unit, per_update
        self.n = 0
        self.postfix: dict = {}
        say(f"{desc}: {total} {unit}{'s' * (total != 1)}" if total is not None else desc)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.per_update:
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            say(f"{self.desc}: {self.n}/{self.total} {self.unit}s done{extra}")

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def write(self, s: str, file=None, **_) -> None:
        print(s, file=file or sys.stderr, flush=True)

    def close(self) -> None:
        pass


def bar(total: int, desc: str, enabled: bool = True, unit: str = "step", per_update: bool = False):
    """A tqdm bar in a terminal, ``Lines`` elsewhere, a disabled tqdm bar when not ``enabled``."""
    from tqdm import tqdm  # not tqdm.auto: in a notebook (no terminal) a bar is Lines or disabled, and
    # tqdm.auto there warns that ipywidgets is missing even for a disabled bar

    if enabled and not is_terminal():
        return Lines(total, desc, unit, per_update)
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not enabled, dynamic_ncols=True)


def evaluation_line(rows: Sequence[dict]) -> str:
    """One evaluation (its rows, one per task) as one line: where training is, its loss, accuracy per task."""
    r = rows[0]
    if r["phase"] == "init":
        where = "untrained model"
    else:
        where = f"task {r['trained_task']} epoch {r['epoch']}" + (" (mid-epoch)" if r["phase"] == "step" else "")
    loss = r.get("train_loss")
    loss_text = "" if loss is None or (isinstance(loss, float) and math.isnan(loss)) else f", train loss {loss:.4f}"
    acc = " ".join(f"{int(x['eval_task'])}:{100 * float(x['accuracy']):.1f}" for x in rows)
    return f"eval at step {r['global_step']}, {where}{loss_text}; accuracy (%) per task {acc}"


def evaluations(rows: Iterable[dict]) -> list[list[dict]]:
    """Rows grouped by evaluation point (an evaluation gives one row per evaluated task), in order."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["phase"], r["trained_task"], r["epoch"], r["global_step"]), []).append(r)
    return list(groups.values())


def evaluation(rows: Sequence[dict], enabled: bool = True) -> None:
    """Outside a terminal, one line per evaluation point in ``rows`` (in a terminal the bars show progress)."""
    if not enabled or not rows or is_terminal():
        return
    for group in evaluations(rows):
        say(evaluation_line(group))
