"""What a report's figures show and how (experiments, tasks, bands, width, style, file formats), checked.

Kept apart from the drawing (``report_figures``) and free of heavy imports, so that
``python -m forgetting.plot --help`` lists the choices without loading matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .errors import BadInput

FORMATS = ("pdf", "svg", "png")
WIDTHS = {"column": 3.5, "page": 7.16}  # inches: one column / the text width of a two-column journal page
STYLES = ("paper", "notebook", "talk", "poster")  # seaborn plotting contexts; paper: 7-9 pt type
DEFAULT_WIDTH = "page"
DEFAULT_STYLE = "paper"


@dataclass(frozen=True)
class Look:
    """What a figure shows and how: the experiments (labels, in this order; None: all), the old tasks
    that get a curve panel (None: all), the 95% bands, the width, the seaborn context, the files, titles."""

    labels: tuple[str, ...] | None = None
    tasks: tuple[int, ...] | None = None
    bands: bool = True
    width: str = DEFAULT_WIDTH
    style: str = DEFAULT_STYLE
    formats: tuple[str, ...] = FORMATS
    titles: bool = True  # a title over each figure (off for the paper style: the caption carries it)

    @property
    def inches(self) -> float:
        return WIDTHS[self.width]


def _items(value: str | Iterable, flag: str) -> list:
    items = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
    if not items or items == [""]:
        raise BadInput(f"{flag}: empty; name at least one")
    return items


def check_style(bands=True, width: str = DEFAULT_WIDTH, style: str = DEFAULT_STYLE,
                formats: str | Iterable[str] = FORMATS, titles: bool | None = None) -> Look:
    """The options that need no results: a Look drawing every experiment and task. ``titles`` None: off
    for the paper style (a paper's caption says what a figure shows), on for the others."""
    if not isinstance(bands, bool):
        raise BadInput(f"--bands: {bands!r} is not a boolean; allowed: True, False")
    if titles is not None and not isinstance(titles, bool):
        raise BadInput(f"--titles: {titles!r} is not a boolean; allowed: True, False, None (off for the paper style)")
    if width not in WIDTHS:
        raise BadInput(f"--width: {width!r} is not a width; allowed: "
                       + ", ".join(f"{w} ({inches} in)" for w, inches in WIDTHS.items()))
    if style not in STYLES:
        raise BadInput(f"--style: {style!r} is not a style; allowed: {', '.join(STYLES)}")
    chosen: list[str] = []
    for f in _items(formats, "--formats"):
        if f not in FORMATS:
            raise BadInput(f"--formats: {f!r} is not a format written; allowed: {', '.join(FORMATS)} (comma-separated)")
        if f not in chosen:
            chosen.append(f)
    return Look(bands=bands, width=width, style=style, formats=tuple(chosen),
                titles=style != "paper" if titles is None else titles)


def split_names(text: str, known: set[str]) -> list[str]:
    """A comma-separated list whose items may hold commas themselves (``kl, λ=0.5,naive``): at each
    place the longest run of pieces that is a known name."""
    parts = text.split(",")
    out, i = [], 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            candidate = ",".join(parts[i:j]).strip()
            if candidate in known:
                out.append(candidate)
                i = j
                break
        else:
            out.append(parts[i].strip())  # unknown: named by choose_labels
            i += 1
    return out


def choose_labels(table, methods: str | Iterable[str] | None, order: list[str]) -> tuple[str, ...] | None:
    """The experiment labels ``methods`` names, in its order: each item an experiment's label as in
    summary.md (``kl, λ=0.5``), its name without the variant, or a method (``kl``: every strength of it,
    not a λ=0 run shown as naive). ``order`` (every label, by colour) orders the labels one item gives."""
    if methods is None:
        return None
    labels = [label for label in order if label in set(table["label"])]
    names = dict(zip(table["label"], table["name"]))
    method_of = dict(zip(table["label"], table["method"]))
    known = set(labels) | set(names.values()) | set(method_of.values())
    items = split_names(methods, known) if isinstance(methods, str) else [str(m).strip() for m in methods]
    if not items or items == [""]:
        raise BadInput("--methods: empty; name at least one method or experiment")
    chosen: list[str] = []
    for item in items:
        if item in labels:
            got = [item]
        elif item in names.values():
            got = [label for label in labels if names[label] == item]
        else:
            got = [label for label in labels if method_of[label] == item and not label.startswith("naive")]
        if not got:
            allowed = sorted(set(method_of.values())) + [repr(label) for label in labels]
            raise BadInput(f"--methods: {item!r} is not a method or experiment in these results; allowed: "
                           f"{', '.join(allowed)} (comma-separated)")
        chosen += [label for label in got if label not in chosen]
    return tuple(chosen)


def choose_tasks(table, tasks: str | Iterable[int] | None) -> tuple[int, ...] | None:
    """The old tasks (numbers, as in the figures: 0 is the base task) that get a forgetting-curve panel."""
    if tasks is None:
        return None
    n_old = int(table["n_tasks"].max()) - 1 if len(table) else 0
    allowed = f"0-{n_old - 1}" if n_old > 1 else ("0" if n_old == 1 else "none (no run has an old task)")
    chosen: list[int] = []
    for item in _items(tasks, "--tasks"):
        try:
            k = int(item)
        except (TypeError, ValueError):
            k = None
        if k is None or isinstance(item, float) or not 0 <= k < n_old:
            raise BadInput(f"--tasks: {item!r} is not an old task of these results; allowed: {allowed} (comma-separated)")
        if k not in chosen:
            chosen.append(k)
    return tuple(chosen)
