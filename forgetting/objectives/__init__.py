"""What a model predicts and how it is scored: one ``Objective`` per output kind.

The loop, the methods and the evaluator never ask what kind of model they train; they ask the
run's objective, which the stream owns (``TaskStream.objective`` names it; ``objective_for``
gives the instance) and ``registry.resolve`` chooses once (a model may declare its own, as the
causal LMs do, else the stream's). An objective gives:

- the data loss of a batch (``data_loss``);
- the distributions the penalties compare and the positions they are taken at, from the student's
  logits and the frozen teacher (``penalty_kl``), and the teacher's outputs on a task's training
  set with their cache (``teacher_cache``, ``cache_rows``);
- the evaluator and its measures (``evaluator``), and which measures the reports show
  (``report_measures``);
- the samples EWC's Fisher is taken over (``fisher_terms``, or the whole ``fisher``);
- what it offers methods (``provides``): a method's ``needs`` must be among them (``resolve`` refuses
  a mismatch in one line).

Built-ins: ``classification`` (class outputs over a head layout) and ``causal-lm`` (next-token
prediction with a loss mask). A new one is a module with an ``Objective`` subclass registered with
``register`` (``registry.register_objective``), named by a stream's or model's ``OBJECTIVE``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from ..streams.base import Batch, HeadLayout, TaskStream
    from ..teacher import TeacherCache

OBJECTIVES: dict[str, str] = {  # the built-ins, imported on first use
    "classification": "forgetting.objectives.classification:Classification",
    "causal-lm": "forgetting.objectives.causal_lm:CausalLM",
}
_registered: dict[str, type] = {}


class Objective:
    """The protocol (and the defaults) of an output kind; one instance per stream."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # how messages name the models it trains: "classifiers", "causal LMs"
    provides: ClassVar[frozenset[str]] = frozenset()  # what methods may need of it ("class_distribution", ...)
    cache_unit: ClassVar[str] = "examples"  # what a teacher-cache row is
    # (summary column of metrics.run_summary, its heading, scale to print): what the reports' tables show for a
    # run of this objective, headline first; a run writes them to its manifest, so reports read no code
    report_measures: ClassVar[tuple[tuple[str, str, float], ...]] = (
        ("average_accuracy", "avg acc", 100.0), ("old_task_accuracy", "old-task acc", 100.0),
        ("forgetting_max", "forgetting", 100.0))

    def __init__(self, layout: "HeadLayout", info: dict | None = None):
        self.layout = layout
        self.info = dict(info or {})

    @classmethod
    def of(cls, stream: "TaskStream") -> "Objective":
        return cls(stream.layout, stream.info)

    # --- training -------------------------------------------------------------------------
    def data_loss(self, logits: Tensor, batch: "Batch", task: int) -> Tensor:
        """The loss of the batch's own targets while ``task`` trains (a scalar)."""
        raise NotImplementedError

    def loss_units(self, batch: "Batch") -> int:
        """What the batch's losses are means over (its examples): a process that trains on part of a batch
        weighs its mean by its part of these (``distributed``)."""
        return len(batch)

    # --- penalties ------------------------------------------------------------------------
    def penalty_kl(self, logits: Tensor, batch: "Batch", task: int, teacher: Callable[["Batch"], Tensor],
                   cache: TeacherCache | None, *, direction: str, temperature: float, **options: Any) -> Tensor:
        """The KL penalty between the teacher's and the student's predictive distributions on the batch, at the
        positions and over the outputs this objective compares them (``teacher(batch)``: the live teacher's
        logits, run without gradient; ``cache``: its outputs from ``teacher_cache`` where they hold the batch)."""
        raise NotImplementedError

    def cache_rows(self, data) -> int:
        """How many rows of ``layout.n_outputs`` floats a teacher cache of ``data`` takes."""
        return len(data)

    def teacher_cache(self, teacher, data, task: int, batch_size: int, device, world=None) -> TeacherCache:
        """The frozen teacher's outputs on every example of ``data`` (task ``task``), for ``penalty_kl``; under a
        launcher (``world``, passed only then: an objective that takes no ``world`` runs on one process) each rank
        runs the teacher on its part of the examples and the parts are gathered."""
        raise NotImplementedError

    # --- EWC's Fisher ---------------------------------------------------------------------
    def fisher_terms(self, model, task: int, labels: str, device) -> Callable | None:
        """The samples the diagonal Fisher is taken over: ``terms(batch) -> [(y, nll(logits, y) -> [n], "square",
        weight or None)]`` (``methods.importance.mean_grad_sums``); ``labels``: ``true`` (y drawn from the model)
        or ``empirical`` (the data's). None: this objective computes the whole Fisher in ``fisher``."""
        return None

    def fisher(self, model, data, task: int, labels: str, device):
        """The diagonal Fisher as a dict of parameter name -> tensor, where ``fisher_terms`` gives None."""
        raise NotImplementedError(f"objective {self.name!r} gives no Fisher")

    # --- on-policy fine-tuning (``--objective pg``; ``provides`` holds "answer_sampling" where implemented) ----
    @classmethod
    def check_answers(cls, options: dict) -> None:
        """BadInput in one line where the run's stream and model options (``options``) give tasks with no answer
        to sample and reward (called by ``resolve`` for ``--objective pg``, before any file is written)."""

    def sample_answers(self, model, batch: "Batch", task: int, groups: int, generator, *, temperature: float,
                       max_new_tokens: int, log_probs: bool = False):
        """``groups`` answers per example drawn from the live ``model`` (the caller has it in eval mode, without
        gradient), seeded by the loop's ``generator``; with ``log_probs`` also log π(answer) under that model
        (the sampling policy, for PPO's ratio), else None."""
        raise NotImplementedError(f"objective {self.name!r} samples no answers")

    def answer_log_probs(self, model, batch: "Batch", task: int, answers, *, temperature: float):
        """The student (train mode, with gradient) on the batch: (its logits on ``batch.inputs``, for the penalties;
        log π(answer) per answer token, [inputs, G] or [inputs, G, length]; the answer tokens' mask or None)."""
        raise NotImplementedError(f"objective {self.name!r} scores no answers")

    def correct(self, answers, batch: "Batch", stream: "TaskStream") -> Tensor:
        """Bool [inputs, G]: which sampled answers are correct for their example."""
        raise NotImplementedError(f"objective {self.name!r} knows no correct answers")

    # --- evaluation -----------------------------------------------------------------------
    def evaluator(self, stream: "TaskStream", batch_size: int, device, subset: int = 0):
        """What measures every task at an evaluation point: ``.evaluate(model, base_model, trained_task)``."""
        raise NotImplementedError


def register(name: str | None = None):
    """Class decorator: an ``Objective`` subclass becomes objective ``name`` (default: its ``name``)."""
    def wrap(cls):
        key = name or cls.name
        cls.name = key
        _registered[key] = cls
        return cls
    return wrap


def names() -> list[str]:
    return [*OBJECTIVES, *(n for n in _registered if n not in OBJECTIVES)]


def objective_class(name) -> type[Objective]:
    """The class of objective ``name`` (a registered name, a built-in, or the class itself)."""
    if isinstance(name, type) and issubclass(name, Objective):
        return name
    if name in _registered:
        return _registered[name]
    if name in OBJECTIVES:
        module, _, attr = OBJECTIVES[name].partition(":")
        _registered[name] = getattr(importlib.import_module(module), attr)
        return _registered[name]
    raise BadInput(f"unknown objective {name!r}, allowed: {', '.join(names())}")


def objective_for(stream: "TaskStream") -> Objective:
    """The objective of ``stream`` (made once and kept on the stream)."""
    made = stream.__dict__.get("_objective")
    if made is None:
        made = objective_class(getattr(stream, "objective", "classification")).of(stream)
        stream.__dict__["_objective"] = made
    return made


__all__ = ["OBJECTIVES", "Objective", "names", "objective_class", "objective_for", "register"]
