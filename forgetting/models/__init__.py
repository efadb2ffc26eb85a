"""Models by name: each module gives ``OPTIONS``, ``INPUTS`` (``tensor`` or ``text``),
``build(stream, options, source)`` and, for text models, ``tokenizer(source, options)``."""

from __future__ import annotations

MODELS = {"mlp": "forgetting.models.mlp", "bert": "forgetting.models.bert", "resnet18": "forgetting.models.resnet",
          "gpt2": "forgetting.models.causal", "causal": "forgetting.models.causal"}


def split_spec(name: str) -> tuple[str, str | None]:
    """``kind[:SOURCE]`` -> (kind, source or None): ``bert:PATH`` is the bert kind from a checkpoint."""
    kind, sep, source = name.partition(":")
    return kind, (source if sep else None)
