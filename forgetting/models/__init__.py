"""Models by name: each module gives OPTIONS and ``build(stream, options)``."""

from __future__ import annotations

import importlib

from ..errors import BadInput

MODELS = {"mlp": "forgetting.models.mlp", "bert": "forgetting.models.bert",
          "gpt2": "forgetting.models.causal", "causal": "forgetting.models.causal"}


def model_module(name: str):
    kind = name.split(":", 1)[0]
    if kind not in MODELS:
        raise BadInput(f"--model: unknown model {name!r}, allowed: {', '.join(MODELS)}")
    return importlib.import_module(MODELS[kind])


def build_model(name: str, stream, options: dict):
    """``name`` is a model kind, optionally followed by ``:SOURCE`` (a checkpoint path or hub id)."""
    source = name.split(":", 1)[1] if ":" in name else None
    return model_module(name).build(stream, options, source)
