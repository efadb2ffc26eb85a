"""Rewards of ``--objective pg``: by name, like methods; a user's own is a registered function.

A reward scores the answers sampled for a batch: ``reward(answers, batch, context) -> [inputs, G]``
(float), ``answers`` [inputs, G] the sampled outputs, ``context`` the ``RewardContext`` of the step
(the run's objective, which knows what a correct answer is, the stream and the task being trained).
Built-in: ``correct`` (1 for a correct answer, 0 otherwise; a task may declare a *set* of correct
answers per target, ``Task.answers``; a causal LM's completion is correct when it is the response, exact match)
and ``choice`` (causal LMs: 1 when the completion picks the example's own choice among its task's answers).
A reward may carry ``check_stream(stream)``, run before any file is written. Register one with ``register_reward("name")`` or name it by
its path (``--reward mypkg.rewards:brevity``).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from .errors import BadInput

Reward = Callable[[Tensor, Any, "RewardContext"], Tensor]


@dataclass
class RewardContext:
    objective: Any  # objectives.Objective: ``correct(answers, batch, stream)``
    stream: Any
    task: int


def correct(answers: Tensor, batch, context: RewardContext) -> Tensor:
    """1 where the sampled answer is a correct answer of its example (its target, or its task's answer set)."""
    return context.objective.correct(answers, batch, context.stream).float()


def choice(answers: Tensor, batch, context: RewardContext) -> Tensor:
    """Causal LMs, completion tasks with a fixed set of answers (``choices``: sentiment words, news topics): 1 where
    the sampled completion picks the example's own choice. A completion picks the choice its text (special tokens
    left out, whitespace normalised) is, or begins with followed by a space (the longest such choice; none: 0), so
    an answer need not end where the response does, unlike ``correct``'s exact match."""
    picked = context.objective.chosen(answers, batch, context.stream)
    return (picked == batch.targets.to(picked.device).unsqueeze(1)).float()


def _choice_check(stream) -> None:
    without = [t.name for t in stream.tasks[1:stream.n_learned] if not getattr(t.train, "choices", None)]
    if without:  # a classifier's data has no choices either
        raise BadInput(f"--reward choice: needs causal-LM completion tasks with a fixed set of answers (choices); "
                       f"{', '.join(without)} has none; allowed: --reward correct")


choice.check_stream = _choice_check  # called before any file is written (preparing.check_loop_on_stream)

REWARDS: dict[str, Reward] = {"correct": correct, "choice": choice}


def register_reward(name: str):
    """Decorator: ``fn(answers, batch, context) -> [inputs, G]`` becomes reward ``name``."""
    def wrap(fn):
        REWARDS[name] = fn
        return fn
    return wrap


def reward(name: str) -> Reward:
    """The reward registered as ``name``, or the function a ``module:function`` / ``module.function`` path names."""
    if name in REWARDS:
        return REWARDS[name]
    if re.fullmatch(r"[A-Za-z_][\w.]*[:.][A-Za-z_]\w*", name or ""):
        module, _, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise BadInput(f"--reward {name}: does not load ({e}); allowed: {', '.join(REWARDS)} or module:function")
        if callable(fn):
            return fn
    raise BadInput(f"--reward {name}: unknown reward, allowed: {', '.join(REWARDS)} or a module:function path")
