"""Suite files: a study written down as TOML, checked whole before any run starts.

A suite names task streams, scenarios, a model, methods with grids of hyper-parameters, seeds
and epochs; ``Suite.runs`` expands it into one ``RunConfig`` per point of the grid. Every value
goes through the same ``Option`` declarations and registries as ``python -m forgetting.run``,
so a run from a suite and the same run from the CLI have the same config and the same run id.
A bad file gives one ``BadInput`` line naming the file and the field::

    name = "example"

    [defaults]                  # any experiment key except name and method
    seeds = [0, 1, 2]
    epochs = 5

    [[experiment]]
    benchmark = "split-mnist"
    scenarios = ["task", "domain", "class"]
    if_data_missing = "skip"    # "error" (the default) or "skip" with a note
    model = "mlp"
    model_options = { hidden = [400, 400] }

    [[experiment.method]]
    name = "kl"                 # a method spec as on the CLI: kl, rdrop, kl+rdrop, ...
    temperature = 2.0           # a fixed hyper-parameter
    grid.kl_lambda = [0, 0.1, 1, 10]   # one run per value (several grid keys: their product)
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import registry
from .config import LOOP_OPTIONS, Component, RunConfig
from .errors import BadInput
from .options import Option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with tomli, the backport of tomllib
    import tomli as tomllib

DATA_MISSING = ("error", "skip")
SUITE_KEYS = ("name", "description", "defaults", "experiment")
_CORE = {o.name: o for o in LOOP_OPTIONS if o.name != "seed"}
_SEED = next(o for o in LOOP_OPTIONS if o.name == "seed")
EXPERIMENT_KEYS = ("name", "benchmark", "scenarios", "model", "model_options", "stream_options", "seeds",
                   "if_data_missing", "method", *_CORE)
REQUIRED = ("benchmark", "scenarios", "seeds", "epochs", "method")
_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean"}


@dataclass
class Experiment:
    """One stream with its scenarios, model and method grid; ``points`` are (method, hparams) pairs."""

    name: str
    benchmark: str
    scenarios: list[str]
    model: str
    model_options: dict[str, Any]
    stream_options: dict[str, Any]
    seeds: list[int]
    core: dict[str, Any]
    if_data_missing: str
    points: list[tuple[str, dict[str, Any]]]
    where: str  # "FILE: experiment[i]" for messages

    def runs(self, results_dir: str, data_dir: str | None, device: str = "auto") -> list[RunConfig]:
        """One resolved config per scenario x method point x seed (``registry.resolve`` checks each)."""
        out = []
        for scenario in self.scenarios:
            for method, hparams in self.points:
                for seed in self.seeds:
                    config = RunConfig(
                        stream=Component(self.benchmark, {**self.stream_options, "scenario": scenario}),
                        model=Component(self.model, dict(self.model_options)), method=Component(method, dict(hparams)),
                        loop={**self.core, "seed": seed}, device=device, data_dir=data_dir,
                        results_dir=results_dir, progress=False)
                    try:
                        out.append(registry.resolve(config))
                    except BadInput as e:
                        raise _fail(self.where, str(e)) from None
        return out


@dataclass
class Suite:
    path: Path
    name: str
    description: str
    experiments: list[Experiment] = field(default_factory=list)

    def runs(self, results_dir: str, data_dir: str | None, device: str = "auto") -> list[RunConfig]:
        return [c for e in self.experiments for c in e.runs(results_dir, data_dir, device)]


# --- checking ---------------------------------------------------------------------------------
def _fail(where: str, message: str) -> BadInput:
    return BadInput(f"{where}: {message}")


def _table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a table, got {_kind(value)} {value!r}")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return "a " + _TYPE_NAMES.get(type(value), type(value).__name__)


def _unknown(d: dict, allowed, where: str) -> None:
    for key in d:
        if key not in allowed:
            raise _fail(where, f"unknown key {key!r}, allowed: {', '.join(sorted(allowed)) or 'none'}")


def _scalar_type_ok(value: Any, typ: type) -> bool:
    """TOML gives typed values: no string where a number belongs (the CLI's coercion is not wanted here)."""
    if typ is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if typ is float:
        return isinstance(value, (int, float))
    return isinstance(value, typ)


def check_value(option: Option, value: Any, where: str) -> Any:
    """``value`` strictly of the option's type, then through ``Option.check`` for ranges and choices."""
    allowed = option.describe_allowed()
    if option.nargs:
        if not isinstance(value, list) or not all(_scalar_type_ok(v, option.type) for v in value):
            raise _fail(where, f"bad value {value!r} ({_kind(value)}), allowed: {allowed}")
    elif not _scalar_type_ok(value, option.type):
        raise _fail(where, f"bad value {value!r} ({_kind(value)}), allowed: {allowed}")
    return option.check(value, where=where)


def check_options(options: list[Option], values: Any, where: str) -> dict[str, Any]:
    """Every option's value (defaults filled in, as ``check_all`` does for the CLI)."""
    values = _table(values, where)
    known = {o.name: o for o in options}
    _unknown(values, known, where)
    return {o.name: check_value(o, values[o.name], f"{where}.{o.name}") if o.name in values else o.default
            for o in options}


def _str_choice(value: Any, allowed, where: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _fail(where, f"bad value {value!r}, allowed: {', '.join(allowed)}")
    return value


def _list_of(value: Any, where: str, check) -> list:
    if not isinstance(value, list) or not value:
        raise _fail(where, f"expected a non-empty list, got {_kind(value)} {value!r}")
    out = [check(v, f"{where}[{i}]") for i, v in enumerate(value)]
    dup = next((v for i, v in enumerate(out) if v in out[:i]), None)
    if dup is not None:
        raise _fail(where, f"{dup!r} is listed twice")
    return out


def _method_points(entry: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """The (method spec, full hparams) pairs of one ``[[experiment.method]]`` table."""
    entry = _table(entry, where)
    if "name" not in entry:
        raise _fail(where, "missing field 'name' (a method spec such as kl, rdrop or kl+rdrop)")
    spec = entry["name"]
    if not isinstance(spec, str):
        raise _fail(f"{where}.name", f"bad value {spec!r} ({_kind(spec)}), allowed: a method spec such as kl+rdrop")
    try:
        options = registry.method_options(spec)
    except BadInput as e:
        raise _fail(f"{where}.name", str(e).removeprefix("--method: ")) from None
    known = {o.name: o for o in options}
    _unknown(entry, {"name", "grid", *known}, where)
    fixed = {k: v for k, v in entry.items() if k not in ("name", "grid")}
    grid = _table(entry.get("grid", {}), f"{where}.grid")
    _unknown(grid, known, f"{where}.grid")
    for key in grid:
        if key in fixed:
            raise _fail(f"{where}.grid.{key}", f"{key!r} is both fixed and in the grid")
    base = check_options(options, fixed, where)
    axes = {key: _list_of(values, f"{where}.grid.{key}", lambda v, w, o=known[key]: check_value(o, v, w))
            for key, values in grid.items()}
    spec = registry.normalise_method(spec)
    return [(spec, {**base, **dict(zip(axes, combo))}) for combo in itertools.product(*axes.values())]


def _experiment(raw: Any, defaults: dict, where: str, defaults_where: str) -> Experiment:
    raw = _table(raw, where)
    _unknown(raw, EXPERIMENT_KEYS, where)
    exp = {**defaults, **raw}

    def at(key: str) -> str:  # where a merged value was written: in the experiment or in [defaults]
        return f"{where}.{key}" if key in raw or key not in defaults else f"{defaults_where}.{key}"
    for key in REQUIRED:
        if key not in exp:
            raise _fail(where, f"missing field {key!r}")
    benchmark = exp["benchmark"]
    if not isinstance(benchmark, str):
        raise _fail(at("benchmark"), f"bad value {benchmark!r}, allowed: {', '.join(registry.names('stream'))}")
    try:
        stream_opts = registry.stream_options(benchmark)
    except BadInput as e:
        raise _fail(at("benchmark"), str(e).removeprefix("--benchmark: ")) from None
    scenario_option, stream_opts = stream_opts[0], stream_opts[1:]
    scenarios = _list_of(exp["scenarios"], at("scenarios"), lambda v, w: check_value(scenario_option, v, w))
    model = exp.get("model", "mlp")
    if not isinstance(model, str):
        raise _fail(at("model"), f"bad value {model!r}, allowed: {', '.join(registry.names('model'))}")
    try:
        model_spec = registry.model(model)
    except BadInput as e:
        raise _fail(at("model"), str(e).removeprefix("--model: ")) from None
    name = exp.get("name", benchmark)
    if not isinstance(name, str):
        raise _fail(at("name"), f"bad value {name!r}, allowed: a string")
    methods = exp["method"]
    if not isinstance(methods, list) or not methods:
        raise _fail(at("method"), "expected one or more [[experiment.method]] tables")
    points = []
    for j, entry in enumerate(methods):
        for point in _method_points(entry, f"{at('method')}[{j}]"):
            if point not in points:
                points.append(point)
    return Experiment(
        name=name, benchmark=benchmark, scenarios=scenarios, model=model,
        model_options=check_options(list(model_spec.options), exp.get("model_options", {}), at("model_options")),
        stream_options=check_options(stream_opts, exp.get("stream_options", {}), at("stream_options")),
        seeds=_list_of(exp["seeds"], at("seeds"), lambda v, w: check_value(_SEED, v, w)),
        core={k: check_value(o, exp[k], at(k)) if k in exp else o.default for k, o in _CORE.items()},
        if_data_missing=_str_choice(exp.get("if_data_missing", "error"), DATA_MISSING, at("if_data_missing")),
        points=points, where=where,
    )


def load_suite(path: str | Path) -> Suite:
    """The suite in ``path``, every field checked; BadInput naming the file and the field otherwise."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BadInput(f"{path}: cannot read the suite file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a text file (a suite is TOML)") from None
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{path}: not valid TOML: {e}") from None
    where = str(path)
    _unknown(raw, SUITE_KEYS, where)
    name = raw.get("name", path.stem)
    description = raw.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            raise _fail(f"{where}: {key}", f"bad value {value!r}, allowed: a string")
    defaults = _table(raw.get("defaults", {}), f"{where}: defaults")
    _unknown(defaults, [k for k in EXPERIMENT_KEYS if k not in ("name", "method")], f"{where}: defaults")
    if "experiment" not in raw:
        raise _fail(where, "missing field 'experiment' (one or more [[experiment]] tables)")
    experiments = raw["experiment"]
    if not isinstance(experiments, list) or not experiments:
        raise _fail(f"{where}: experiment", "expected one or more [[experiment]] tables")
    return Suite(path, name, description,
                 [_experiment(e, defaults, f"{where}: experiment[{i}]", f"{where}: defaults") for i, e in enumerate(experiments)])
