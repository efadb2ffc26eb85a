"""One place that knows every component of a run and resolves a run's config.

Streams, models, methods and runners are registered here by name: the built-ins from their
packages (``streams.BENCHMARKS``, ``models.MODELS``, ``methods.METHODS``, the Avalanche
strategies), a user's own with the decorators below, installed packages through the
``forgetting.streams`` / ``forgetting.models`` / ``forgetting.methods`` entry points, and any
module named by its dotted path (``--method mypkg.mymethod``). Each declares its options.

``resolve(config)`` is the only place a run's values are checked: names, scenario, device, data
directory, and each component's options (an option of another component is refused). The CLI,
suite files, sweeps and Python code only gather values (``gather``/``make_config``) and call it.
This module sits above streams, models and methods: they never import it.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

from .config import DEVICES, LOOP_OPTIONS, PG_OPTIONS, Component, RunConfig
from .errors import BadInput
from .extras import require
from .optim import check as check_recipe
from .tracking import check as tracking_check
from .options import Option

KINDS = ("stream", "model", "method")
ENTRY_POINT_GROUPS = {"stream": "forgetting.streams", "model": "forgetting.models", "method": "forgetting.methods"}
RUNNERS = {  # the loops a method can declare (``Method.runner``)
    "forgetting": "forgetting.train:Trainer",
    "avalanche": "forgetting.integrations.avalanche:AvalancheTrainer",
}
_DEVICE = re.compile(r"(auto|cpu|cuda(:\d+)?)")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: options, the inputs it reads, its builder, (text models) its tokenizer maker, the
    objective it brings (None: the stream's), whether its options make it train fresh adapters at every task
    (``trains_adapters(options)``, LoRA) and a check of its options against the device (``check_device``)."""

    build: Callable  # build(stream, options, source) -> nn.Module
    options: tuple[Option, ...] = ()
    inputs: str = "tensor"
    tokenizer: Callable | None = None  # tokenizer(source, options) -> streams.text.TokenizerMaker or a function
    objective: str | None = None
    trains_adapters: Callable[[dict], bool] | None = None
    check_device: Callable | None = None  # check_device(options, torch.device): BadInput where they cannot meet

    @classmethod
    def of_module(cls, module: ModuleType) -> "ModelSpec":
        return cls(module.build, tuple(getattr(module, "OPTIONS", ())), getattr(module, "INPUTS", "tensor"),
                   getattr(module, "tokenizer", None), getattr(module, "OBJECTIVE", None),
                   getattr(module, "trains_adapters", None), getattr(module, "check_device", None))


_registered: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
_entry_points_loaded: set[str] = set()


# --- registering -------------------------------------------------------------------------------
def register_stream(name: str, *, options: Iterable[Option] = (), reads_data_dir: bool = False,
                    inputs: str = "tensor", objective: str = "classification"):
    """Decorator: ``build(scenario, options) -> TaskStream`` becomes benchmark ``name`` (its streams' targets are
    for ``objective``)."""
    from .streams import Benchmark

    def wrap(build):
        _registered["stream"][name] = Benchmark(build, tuple(options), reads_data_dir, inputs, objective)
        return build
    return wrap


def register_model(name: str, *, options: Iterable[Option] = (), inputs: str = "tensor",
                   tokenizer: Callable | None = None, objective: str | None = None):
    """Decorator: ``build(stream, options, source) -> nn.Module`` becomes model ``name``."""
    def wrap(build):
        _registered["model"][name] = ModelSpec(build, tuple(options), inputs, tokenizer, objective)
        return build
    return wrap


def register_objective(name: str | None = None):
    """Class decorator: an ``objectives.Objective`` subclass becomes objective ``name`` (default: its ``name``),
    which a stream (``register_stream(..., objective=name)``) or a model declares."""
    from .objectives import register

    return register(name)


def register_method(name: str | None = None):
    """Class decorator: a ``Method`` subclass becomes method ``name`` (default: its ``name`` attribute)."""
    def wrap(cls):
        key = name or cls.name
        if name:
            cls.name = name
        _registered["method"][key] = cls
        return cls
    return wrap


# --- looking up --------------------------------------------------------------------------------
def _builtins(kind: str) -> dict[str, Any]:
    if kind == "stream":
        from .streams import BENCHMARKS
        return BENCHMARKS
    if kind == "model":
        from .models import MODELS
        return MODELS
    from .integrations import AVALANCHE_METHODS
    from .methods import METHODS
    return {**METHODS, **AVALANCHE_METHODS}


def _load_entry_points(kind: str) -> None:
    if kind in _entry_points_loaded:
        return
    _entry_points_loaded.add(kind)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUPS[kind]):
        if ep.name in _registered[kind]:
            continue
        try:
            obj = ep.load()  # importing the module runs its decorators
        except Exception as e:  # a broken plug-in must not break the built-ins
            raise BadInput(f"entry point {ep.name!r} ({ep.value}) of {ENTRY_POINT_GROUPS[kind]} does not load: {e}")
        if ep.name not in _registered[kind]:
            _adopt(kind, ep.name, obj)


def _adopt(kind: str, name: str, obj: Any) -> bool:
    """Register ``obj`` (a module, class or function a user named) under ``name``; False if it is not one."""
    from .methods.base import Method
    from .streams import Benchmark

    if kind == "method":
        if isinstance(obj, ModuleType):
            own = [c for _, c in inspect.getmembers(obj, inspect.isclass)
                   if issubclass(c, Method) and c is not Method and c.__module__ == obj.__name__]
            if len(own) != 1:
                return False
            obj = own[0]
        if inspect.isclass(obj) and issubclass(obj, Method):
            _registered[kind][name] = obj
            return True
        return False
    if kind == "model":
        if isinstance(obj, ModuleType) and hasattr(obj, "build"):
            obj = ModelSpec.of_module(obj)
        if isinstance(obj, ModelSpec):
            _registered[kind][name] = obj
            return True
        return False
    if isinstance(obj, ModuleType) and hasattr(obj, "build"):
        obj = Benchmark(obj.build, tuple(getattr(obj, "OPTIONS", ())), getattr(obj, "READS_DATA_DIR", False),
                        getattr(obj, "INPUTS", "tensor"), getattr(obj, "OBJECTIVE", "classification"))
    if isinstance(obj, Benchmark):
        _registered[kind][name] = obj
        return True
    return False


def _import_named(kind: str, name: str) -> bool:
    """A user's component named by module path (``mypkg.mymethod``) or ``module:attr``."""
    module_name, _, attr = name.partition(":")
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", module_name) or ("." not in module_name and not attr):
        return False
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            return False  # no such module: reported as an unknown name
        raise BadInput(f"{name}: importing it failed: {e}") from None
    except Exception as e:
        raise BadInput(f"{name}: importing it failed: {type(e).__name__}: {e}") from None
    if name in _registered[kind]:
        return True
    return _adopt(kind, name, getattr(module, attr) if attr else module)


def _lookup(kind: str, name: str, flag: str) -> Any:
    if name in _registered[kind]:
        return _registered[kind][name]
    builtins = _builtins(kind)
    if name in builtins:
        return builtins[name]
    _load_entry_points(kind)
    if name in _registered[kind] or _import_named(kind, name):
        return _registered[kind][name]
    raise BadInput(f"{flag}: unknown {kind} {name!r}, allowed: {', '.join(names(kind))} "
                   f"(or a module path of your own, e.g. mypkg.my{kind})")


def names(kind: str) -> list[str]:
    """The registered names of ``kind`` (built-ins first), entry points included."""
    _load_entry_points(kind)
    return [*_builtins(kind), *(n for n in _registered[kind] if n not in _builtins(kind))]


def stream(name: str):
    """The ``streams.Benchmark`` registered as ``name``."""
    return _lookup("stream", name, "--benchmark")


def model(name: str) -> ModelSpec:
    """The ``ModelSpec`` of ``--model`` ``name`` (``kind`` or ``kind:SOURCE``)."""
    from .models import split_spec

    kind, _ = split_spec(name)
    found = _lookup("model", kind, "--model")
    if isinstance(found, str):  # a built-in module path, imported on first use
        found = ModelSpec.of_module(importlib.import_module(found))
        _registered["model"][kind] = found
    return found


def build_model(name: str, stream, options: dict | None = None):
    """Model ``name`` (``kind`` or ``kind:SOURCE``) for ``stream``, its options checked, defaults filled in."""
    from .models import split_spec

    spec = model(name)
    values = _check_section("model", name, list(spec.options), dict(options or {})).values()
    return spec.build(stream, values, split_spec(name)[1])


def tokenizer_maker(name: str, options: dict | None = None):
    """What ``run.prepare`` hands a text stream for model ``name``: training texts -> (tokenizer, source)."""
    from .models import split_spec

    spec = model(name)
    if spec.tokenizer is None:
        return None
    values = _check_section("model", name, list(spec.options), dict(options or {})).values()
    return spec.tokenizer(split_spec(name)[1], values)


def build_methods(spec: str, hparams: dict | None = None) -> list:
    """The method objects of ``spec`` (``kl+rdrop``), each with its options (defaults where not given)."""
    from .methods import instantiate

    methods = instantiate(method_classes(spec), dict(hparams or {}))
    for m, part in zip(methods, normalise_method(spec).split("+")):
        m.name = part  # rows name a method as the run does (a user's class may be registered under a path)
    return methods


def method_class(name: str) -> type:
    found = _lookup("method", name, "--method")
    if isinstance(found, str):
        module, _, attr = found.partition(":")
        found = getattr(importlib.import_module(module), attr or "Method")
        _registered["method"][name] = found
    return found


def normalise_method(spec: str) -> str:
    """``kl + rdrop`` -> ``kl+rdrop``: one spelling, so one run id, for one computation."""
    return "+".join(p.strip() for p in str(spec).split("+"))


def method_classes(spec: str) -> list[type]:
    """The classes of a method spec such as ``kl+rdrop``, checked for clashes."""
    from .methods import check_composition

    parts = normalise_method(spec).split("+")
    if not all(parts):
        raise BadInput(f"--method: malformed method {spec!r}: names joined by '+', e.g. kl+rdrop")
    if len(set(parts)) != len(parts):
        raise BadInput(f"--method: {spec!r} names a method twice")
    classes = [method_class(p) for p in parts]
    own_loop = [(p, c.runner) for p, c in zip(parts, classes) if c.runner != "forgetting"]
    if len(classes) > 1 and own_loop:
        raise BadInput(f"--method: {spec!r} composes {own_loop[0][0]}, which runs its own training loop "
                       f"({own_loop[0][1]}), with another")
    check_composition(spec, classes)
    return classes


def known_method_classes(spec: str) -> list[type] | None:
    """The classes of ``spec`` when every part is a method this installation knows (built in, registered
    in this process, or an installed entry point), else None. Never imports a module a name points to:
    readers of results (plots, summaries) get names from files someone else may have written, and
    ``mypkg.mymethod`` in a received config.json must not run ``mypkg``."""
    parts = normalise_method(spec).split("+")
    if not all(parts):
        return None
    builtins = _builtins("method")
    if any(p not in _registered["method"] and p not in builtins for p in parts):
        try:
            _load_entry_points("method")
        except BadInput:
            return None
        if any(p not in _registered["method"] and p not in builtins for p in parts):
            return None
    try:
        return method_classes(spec)
    except BadInput:
        return None


def method_options(spec: str) -> list[Option]:
    """The options the methods of ``spec`` take, each once."""
    seen: dict[str, Option] = {}
    for cls in method_classes(spec):
        for o in cls.options:
            seen.setdefault(o.name, o)
    return list(seen.values())


def objective(name: str) -> type:
    """The ``objectives.Objective`` class registered as ``name`` (a built-in, a user's registered one, one from an
    entry point of ``forgetting.objectives``, or a module path holding one ``Objective`` subclass)."""
    from . import objectives

    if name in objectives.names():
        return objectives.objective_class(name)
    from importlib.metadata import entry_points

    for ep in entry_points(group="forgetting.objectives"):
        if ep.name == name:
            try:
                ep.load()
            except Exception as e:
                raise BadInput(f"entry point {name!r} ({ep.value}) of forgetting.objectives does not load: {e}")
    if name not in objectives.names() and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", name):
        try:
            module = importlib.import_module(name)
        except ImportError:
            module = None
        own = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if issubclass(c, objectives.Objective) and c.__module__ == name] if module else []
        if len(own) == 1:
            objectives.register(name)(own[0])
    return objectives.objective_class(name)


def objective_of(stream_name: str, model_name: str) -> type:
    """The objective of a run: the model's own where it declares one (causal LMs), else the stream's."""
    return objective(model(model_name).objective or stream(stream_name).objective)


def check_fit(method_spec: str, objective_cls: type, model_name: str, model_options: dict) -> None:
    """BadInput, in one line, where a part of ``method_spec`` needs what the objective does not give
    (``Method.needs``, ``Objective.provides``), or anchors the trainable weights (``Method.anchors_weights``)
    of a model that trains fresh adapters at every task (``ModelSpec.trains_adapters``: LoRA)."""
    provides = set(objective_cls.provides)

    def fits(c) -> bool:
        return set(c.needs) <= provides

    for part, cls in zip(normalise_method(method_spec).split("+"), method_classes(method_spec)):
        missing = sorted(set(cls.needs) - provides)
        if missing:
            why = f" ({cls.needs_why})" if cls.needs_why else ""
            raise BadInput(f"--method {part}: does not apply to {objective_cls.label or objective_cls.name} (objective "
                           f"{objective_cls.name}): it needs {', '.join(missing)}{why}; allowed: "
                           f"{', '.join(_fitting(fits))} and their compositions")
        adapters = model(model_name).trains_adapters
        if cls.anchors_weights and adapters is not None and adapters(model_options):
            raise BadInput(f"--method {part} with --lora-rank: the method anchors the trainable weights, which under "
                           "LoRA are fresh adapters at every task; allowed with LoRA: "
                           f"{', '.join(_fitting(lambda c: fits(c) and not c.anchors_weights))} and their compositions")


def check_objective(loop: dict, given: dict, method_spec: str, objective_cls: type, options: dict) -> None:
    """``--objective`` against the method and the output kind; with ``sft`` the pg options leave ``loop`` (in place),
    so today's runs keep their ids. BadInput in one line on a pg option without pg, pg on an objective that samples
    no answers, pg with a method that changes the task loss or runs its own loop, and an unknown reward."""
    defaults = {o.name: o.default for o in LOOP_OPTIONS}
    if loop.get("sft_targets", "label") == "oracle":
        if loop.get("objective", "sft") != "sft":
            raise BadInput("--sft-targets oracle: applies to --objective sft only (pg trains on the model's own answers)")
        if "oracle_targets" not in objective_cls.provides:
            raise BadInput(f"--sft-targets oracle: not for {objective_cls.label or objective_cls.name} (objective "
                           f"{objective_cls.name}); allowed: classifiers, whose tasks may declare sets of correct answers")
    if loop.get("objective", "sft") == "sft":
        stray = [k for k in PG_OPTIONS if k != "objective" and given.get(k, defaults[k]) != defaults[k]]
        if stray:
            raise BadInput(f"--{stray[0].replace('_', '-')}: applies to --objective pg only (this run: sft)")
        for k in PG_OPTIONS:
            loop.pop(k, None)
        return
    if "answer_sampling" not in objective_cls.provides:
        raise BadInput(f"--objective pg: {objective_cls.label or objective_cls.name} (objective {objective_cls.name}) "
                       "sample no answers; allowed: --objective sft, or pg on classifiers and causal LMs")
    if "completion_sampling" not in objective_cls.provides:  # one answer, no tokens to generate: not in the run id
        if given.get("pg_max_new_tokens", defaults["pg_max_new_tokens"]) != defaults["pg_max_new_tokens"]:
            raise BadInput(f"--pg-max-new-tokens: applies to causal LMs only, not to {objective_cls.label}")
        loop.pop("pg_max_new_tokens", None)
    objective_cls.check_answers(options)
    for part, cls in zip(normalise_method(method_spec).split("+"), method_classes(method_spec)):
        if getattr(cls, "changes_task_loss", False) or getattr(cls, "runner", "forgetting") != "forgetting":
            raise BadInput(f"--objective pg with --method {part}: the method replaces the task loss or the loop that "
                           "pg drives; allowed: methods that add penalties or change the data (kl, ewc, replay, ...)")
    from .rewards import reward

    reward(loop["reward"])


def _fitting(test: Callable[[type], bool]) -> list[str]:
    """The registered method names whose class passes ``test`` (for the one-line refusals)."""
    fit = []
    for n in names("method"):
        try:
            if test(method_class(n)):
                fit.append(n)
        except BadInput:
            continue
    return fit


def runner(spec: str) -> type:
    """The training-loop class that runs method ``spec`` (our Trainer, or Avalanche's loop)."""
    name = method_classes(spec)[0].runner
    module, _, attr = RUNNERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def stream_options(benchmark: str) -> list[Option]:
    """The options of a benchmark, the scenario first, then how the class scenario uses the outputs."""
    from .streams import CLASS_OUTPUTS_OPTION, SCENARIO

    return [SCENARIO, CLASS_OUTPUTS_OPTION, *stream(benchmark).options]


def options_of(kind: str, name: str) -> list[Option]:
    if kind == "stream":
        return stream_options(name)
    if kind == "model":
        return list(model(name).options)
    return method_options(name)


def all_options(kind: str) -> list[Option]:
    """Every option any registered component of ``kind`` declares, each name once (for --help)."""
    seen: dict[str, Option] = {}
    for n in names(kind):
        for o in options_of(kind, n):
            seen.setdefault(o.name, o)
    return list(seen.values())


# --- resolving -------------------------------------------------------------------------------
def _check_section(kind: str, name: str, options: list[Option], values: dict[str, Any]) -> Component:
    """The component with every value checked and defaults filled in, split into options and settings."""
    known = {o.name: o for o in options}
    for key in values:
        if key not in known:
            flag = "--" + key.replace("_", "-")
            label = {"stream": "benchmark", "model": "model", "method": "method", "loop": "the"}[kind]
            allowed = ", ".join(o.flag for o in options if o.name != "scenario") or "none"
            raise BadInput(f"{flag} does not apply to {label} {name!r} (its options: {allowed})")
    checked = {o.name: o.check(values.get(o.name, o.default)) for o in options}
    return Component(name, {k: v for k, v in checked.items() if known[k].is_hashed(v)},
                     {k: v for k, v in checked.items() if not known[k].is_hashed(v)})


def resolve(config: RunConfig) -> RunConfig:
    """``config`` with every name and value checked and every default filled in; BadInput on the first bad one.

    The result is what a run uses and what its id hashes, whichever way the values came
    (CLI, suite file, Python), so a default spelled out or left out gives the same id. A config whose
    ``results_dir`` is None is given ``results/<its budget>`` (``forgetting.budget``).
    """
    if not isinstance(config.device, str) or not _DEVICE.fullmatch(config.device):
        raise BadInput(f"--device: unknown device {config.device!r}, allowed: {', '.join(DEVICES)} (or cuda:N)")
    bench = stream(config.stream.name)
    stream_c = _check_section("stream", config.stream.name, stream_options(config.stream.name), config.stream.values())
    if stream_c.options.get("scenario") != "class" and "class_outputs" in stream_c.options:
        from .streams import CLASS_OUTPUTS_OPTION  # outside class it changes nothing, so it changes no run id

        stream_c.options["class_outputs"] = CLASS_OUTPUTS_OPTION.default
    spec = model(config.model.name)
    if spec.inputs != bench.inputs:
        raise BadInput(f"--model {config.model.name}: it reads {spec.inputs} inputs but benchmark "
                       f"{config.stream.name!r} gives {bench.inputs}, allowed: models that read {bench.inputs}")
    model_c = _check_section("model", config.model.name, list(spec.options), config.model.values())
    if bench.inputs == "text":
        require("text", f"benchmark {config.stream.name!r} (text)")
    objective_cls = objective(spec.objective or bench.objective)  # what the model predicts: chosen here, once
    method_name = normalise_method(config.method.name)
    method_c = _check_section("method", method_name, method_options(method_name), config.method.values())
    check_fit(method_name, objective_cls, config.model.name, model_c.values())
    for cls in method_classes(method_name):  # a method's options against the objective; defaults leave the id
        hook = getattr(cls, "resolve_options", None)
        if hook is not None:
            hook(method_c.options, config.method.values(), objective_cls)
    runs_in = method_classes(method_name)[0].runner
    if runs_in == "avalanche":
        require("avalanche", f"--method {method_name}")
    loop = _check_section("loop", "loop", LOOP_OPTIONS, config.loop).options
    check_recipe(loop, runs_in)
    check_objective(loop, config.loop, method_name, objective_cls, {**stream_c.values(), **model_c.values()})
    if config.data_dir is not None and bench.reads_data_dir and not Path(config.data_dir).is_dir() \
            and not stream_c.settings.get("download"):
        raise BadInput(f"--data-dir: {config.data_dir!r} is not a directory")
    from .streams import default_data_dir  # the default is looked up only after an explicit one was checked

    data_dir = config.data_dir if config.data_dir is not None else default_data_dir()
    resolved = RunConfig(stream=stream_c, model=model_c, method=method_c, loop=loop, device=config.device,
                         data_dir=data_dir, results_dir=str(config.results_dir), progress=bool(config.progress),
                         log_to=tracking_check(config.log_to),
                         data_fingerprint=fingerprint(bench, stream_c, data_dir))
    if config.results_dir is None:  # none given: results/<the run's budget> (forgetting.budget)
        from .budget import run_results_dir

        resolved.results_dir = run_results_dir(resolved)
    return resolved


def fingerprint(bench, stream_c: Component, data_dir: str | None) -> dict:
    """Digests of the data files the stream reads (hashed into the run id): editing the data makes a new run."""
    from .streams import data_fingerprint

    return data_fingerprint(bench, {**stream_c.values(), "data_dir": data_dir})


def gather(benchmark: str = "split-digits", model: str = "mlp", method: str = "kl", values: dict | None = None,
           **where) -> RunConfig:
    """An unresolved config from flat option values (as the CLI and ``make_config`` give them): each value
    goes to the component that declares it; one that the chosen components do not declare is refused."""
    values = dict(values or {})
    method = normalise_method(method)
    sections: dict[str, dict[str, Any]] = {"stream": {}, "model": {}, "method": {}, "loop": {}}
    owners = {o.name: "loop" for o in LOOP_OPTIONS}
    chosen = {"stream": benchmark, "model": model, "method": method}
    for kind in ("method", "model", "stream"):  # method options first: a name both declare goes to the method
        for o in options_of(kind, chosen[kind]):
            owners.setdefault(o.name, kind)
    for key, value in values.items():
        owner = owners.get(key)
        if owner is None:
            _refuse(key, chosen)
        sections[owner][key] = value
    return RunConfig(stream=Component(benchmark, sections["stream"]), model=Component(model, sections["model"]),
                     method=Component(method, sections["method"]), loop=sections["loop"], **where)


def _refuse(key: str, chosen: dict[str, str]) -> None:
    flag = "--" + key.replace("_", "-")
    for kind in KINDS:
        for n in names(kind):
            try:
                declared = any(o.name == key for o in options_of(kind, n))
            except BadInput:
                continue
            if declared:
                label = {"stream": "benchmark", "model": "model", "method": "method"}[kind]
                raise BadInput(f"{flag} does not apply to {label} {chosen[kind]!r} (it is an option of {label} {n!r}; "
                               f"the options of {chosen[kind]!r}: "
                               f"{', '.join(o.flag for o in options_of(kind, chosen[kind]) if o.name != 'scenario') or 'none'})")
    raise BadInput(f"unknown option {flag}")


def make_config(benchmark: str = "split-digits", scenario: str | None = None, model: str = "mlp", method: str = "kl",
                hparams: dict | None = None, model_options: dict | None = None, stream_options: dict | None = None,
                device: str = "auto", data_dir: str | None = None, results_dir: str | None = None,
                progress: bool = True, log_to: list[str] | tuple[str, ...] = (), **options) -> RunConfig:
    """A resolved config from Python: the components by name and any of their options as keywords
    (``make_config(method="kl", kl_lambda=0.5, epochs=2)``); the same checks and run id as the CLI.
    ``results_dir`` None: ``results/<the run's budget>`` (``forgetting.budget``)."""
    values = {**(stream_options or {}), **(model_options or {}), **(hparams or {}), **options}
    if scenario is not None:
        values["scenario"] = scenario
    return resolve(gather(benchmark, model, method, values, device=device, data_dir=data_dir,
                          results_dir=None if results_dir is None else str(results_dir), progress=progress,
                          log_to=[log_to] if isinstance(log_to, str) else list(log_to)))


__all__ = ["ModelSpec", "RUNNERS", "build_methods", "build_model", "check_fit", "gather", "make_config", "method_classes",
           "method_options", "model", "names", "normalise_method", "objective", "objective_of", "register_method",
           "register_model", "register_objective", "register_stream", "resolve", "runner", "stream",
           "tokenizer_maker"]
