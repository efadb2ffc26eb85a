"""Declared options: one place that says a hyper-parameter's name, type, default and allowed range.

Methods, models, streams and the loop each declare theirs; ``registry.resolve`` checks every
value through ``Option.check`` (the CLI, suite files and Python code alike), so a bad value gets
the same one-line error everywhere. ``hashed=False`` marks an execution setting (a cache, a
download) that is recorded but left out of the run id, because it never changes the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .errors import BadInput


@dataclass(frozen=True)
class Option:
    name: str  # config key, e.g. "kl_lambda"; on the CLI: --kl-lambda
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    nargs: str | None = None  # "+" for a list of values
    hashed: bool = True  # False for execution settings (paths, caches, downloads) that never change the numbers
    # False for an option added after runs were recorded: at its default it is kept as a setting (not hashed),
    # so the runs that never set it keep their ids; any other value is hashed as usual
    hashed_at_default: bool = True

    def is_hashed(self, value: Any) -> bool:
        return self.hashed and (self.hashed_at_default or value != self.default)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe_allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        kind = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}[self.type]
        num = (lambda v: str(int(v))) if self.type is int else (lambda v: f"{v:g}")
        if self.minimum is not None:
            kind += f" {'above' if self.exclusive_minimum else 'at least'} {num(self.minimum)}"
        if self.maximum is not None:
            kind += f"{' and' if self.minimum is not None else ''} at most {num(self.maximum)}"
        return ("a list of " if self.nargs else "") + kind

    def check(self, value: Any, where: str | None = None) -> Any:
        """The value coerced to the option's type, or BadInput naming it and what is allowed."""
        label = where or self.flag
        if self.nargs:
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                value = [value]
            if self.nargs == "+" and len(value) == 0:
                raise BadInput(f"{label}: needs at least one value, allowed: {self.describe_allowed()}")
            return [self._check_one(v, label) for v in value]
        return self._check_one(value, label)

    def _check_one(self, value: Any, label: str) -> Any:
        bad = BadInput(f"{label}: bad value {value!r}, allowed: {self.describe_allowed()}")
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise bad
        if self.type in (int, float):
            if isinstance(value, bool):
                raise bad
            try:
                if self.type is int:
                    if isinstance(value, float) and not value.is_integer():
                        raise ValueError
                    v = int(value) if not isinstance(value, str) else int(value, 10)
                else:
                    v = float(value)
            except (TypeError, ValueError):
                raise bad from None
            if isinstance(v, float) and not math.isfinite(v):
                raise bad
            if self.minimum is not None and (v < self.minimum or (self.exclusive_minimum and v == self.minimum)):
                raise bad
            if self.maximum is not None and v > self.maximum:
                raise bad
            if self.choices and v not in self.choices:
                raise bad
            return v
        if not isinstance(value, str):
            raise bad
        if self.choices and value not in self.choices:
            raise bad
        return value


def defaults(options: Iterable[Option]) -> dict[str, Any]:
    return {o.name: o.default for o in options}


def check_all(options: Iterable[Option], values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Every option's value checked (defaults filled in); unknown keys are an error."""
    options = list(options)
    known = {o.name: o for o in options}
    for key in values:
        if key not in known:
            raise BadInput(f"unknown {where.strip() or 'option'} {key!r}: allowed are {', '.join(sorted(known)) or 'none'}")
    out = {}
    for o in options:
        out[o.name] = o.check(values.get(o.name, o.default), where=f"{where}{o.name}" if where else None)
    return out
