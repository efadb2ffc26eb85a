"""The built-in methods by name (``registry`` resolves names, ``a+b`` composes them: ``kl+rdrop``)."""

from __future__ import annotations

from ..errors import BadInput
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
    "der": "forgetting.methods.der",
}


def check_composition(spec: str, classes: list[type[Method]]) -> None:
    """BadInput when the parts of ``spec`` cannot run together in one loop."""
    if sum(c.changes_task_loss for c in classes) > 1:
        raise BadInput(f"--method: {spec!r} combines two methods that each change the task loss")
    if sum(c.changes_batches for c in classes) > 1:
        raise BadInput(f"--method: {spec!r} combines two methods that each change the training data")


def instantiate(classes: list[type[Method]], hparams: dict) -> list[Method]:
    """One instance per part, each given its own options (defaults where ``hparams`` has none)."""
    return [cls(**{o.name: hparams.get(o.name, o.default) for o in cls.options}) for cls in classes]
