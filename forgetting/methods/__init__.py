"""Methods by name; ``a+b`` composes methods (``kl+rdrop``, ``replay+kl``)."""

from __future__ import annotations

import importlib

from ..errors import BadInput
from ..options import Option
from .base import Method

METHODS = {
    "naive": "forgetting.methods.naive",
    "kl": "forgetting.methods.kl",
    "rdrop": "forgetting.methods.rdrop",
    "joint": "forgetting.methods.joint",
    "ewc": "forgetting.methods.ewc",
    "ewc-online": "forgetting.methods.ewc_online",
    "si": "forgetting.methods.si",
    "mas": "forgetting.methods.mas",
    "l2sp": "forgetting.methods.l2sp",
    "replay": "forgetting.methods.replay",
}

# Avalanche's strategies on our streams and model ("module:Class" entries; run by
# forgetting.integrations.avalanche, not by our Trainer, and never composed with '+').
METHODS.update({name: f"forgetting.integrations:{cls}" for name, cls in (
    ("avalanche-naive", "AvalancheNaive"), ("avalanche-ewc", "AvalancheEWC"), ("avalanche-si", "AvalancheSI"),
    ("avalanche-lwf", "AvalancheLwF"), ("avalanche-gem", "AvalancheGEM"), ("avalanche-agem", "AvalancheAGEM"),
    ("avalanche-replay", "AvalancheReplay"), ("avalanche-mas", "AvalancheMAS"), ("avalanche-joint", "AvalancheJoint"),
)})


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise BadInput(f"--method: unknown method {name!r}, allowed: {', '.join(METHODS)} (compose with '+', e.g. kl+rdrop)")
    module, _, attr = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), attr or "Method")


def parse_method(spec: str) -> list[type[Method]]:
    """The classes of a method spec such as ``kl+rdrop``, checked for clashes."""
    parts = [p.strip() for p in str(spec).split("+")]
    if not all(parts):
        raise BadInput(f"--method: malformed method {spec!r}: names joined by '+', e.g. kl+rdrop")
    classes = [method_class(p) for p in parts]
    if len(classes) > 1 and any(getattr(c, "standalone", False) for c in classes):
        raise BadInput(f"--method: {spec!r} composes a method that runs its own training loop (avalanche-*) with another")
    if len(set(parts)) != len(parts):
        raise BadInput(f"--method: {spec!r} names a method twice")
    if sum(c.changes_task_loss for c in classes) > 1:
        raise BadInput(f"--method: {spec!r} combines two methods that each change the task loss")
    if sum(c.changes_batches for c in classes) > 1:
        raise BadInput(f"--method: {spec!r} combines two methods that each change the training data")
    return classes


def method_options(spec: str) -> list[Option]:
    """The options the methods of ``spec`` take."""
    seen, out = set(), []
    for cls in parse_method(spec):
        for o in cls.options:
            if o.name not in seen:
                seen.add(o.name)
                out.append(o)
    return out


def all_options() -> list[Option]:
    seen, out = set(), []
    for name in METHODS:
        for o in method_class(name).options:
            if o.name not in seen:
                seen.add(o.name)
                out.append(o)
    return out


def build_methods(spec: str, hparams: dict) -> list[Method]:
    return [cls(**{o.name: hparams.get(o.name, o.default) for o in cls.options}) for cls in parse_method(spec)]
