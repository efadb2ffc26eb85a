"""The full description of one run, as plain data: one section per component; its hash names the run.

A run is a stream (benchmark and scenario), a model, a method (possibly composed, ``kl+rdrop``)
and the loop's own settings (epochs, batch size, ...), plus where it runs (device, paths). Each
component section holds the ``options`` that change the numbers and the ``settings`` that do not
(caches, downloads: options declared ``hashed=False``). ``registry.resolve`` fills and checks
every section; the run id is a hash of the resolved sections' names and options only, so
adding an option to one component never changes the ids of runs of the others, and paths,
devices and caches never change an id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .options import Option

SCHEMA_VERSION = 2

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "step")
AMP = ("off", "bf16", "fp16")
OBJECTIVES = ("sft", "pg")
SFT_TARGETS = ("label", "oracle")

# The loop's own options (methods, models and streams declare theirs).
LOOP_OPTIONS = [
    Option("epochs", int, 5, "epochs per task", minimum=1),
    Option("batch_size", int, 32, "training batch size", minimum=1),
    Option("lr", float, 1e-3, "learning rate (a fresh optimiser per task)", minimum=0.0, exclusive_minimum=True),
    Option("seed", int, 0, "seed of model initialisation, shuffling and dropout", minimum=0, maximum=2**32 - 1),
    Option("eval_every", int, 0, "also evaluate every N training steps (0: after every epoch only)", minimum=0),
    Option("eval_batch_size", int, 1024, "evaluation batch size", minimum=1),
    Option("eval_subset", int, 0, "evaluate each task on a fixed random subset of this many test examples "
           "(0: the whole test set); for long runs", minimum=0),
    # training recipes (forgetting/optim.py builds them)
    Option("optimizer", str, "adam", "optimiser, fresh for each task: adam, adamw (decoupled weight decay) or sgd",
           choices=OPTIMIZERS),
    Option("momentum", float, 0.0, "SGD momentum (sgd only)", minimum=0.0, maximum=1.0),
    Option("weight_decay", float, 0.0, "weight decay (L2 for sgd and adam, decoupled for adamw)", minimum=0.0),
    Option("lr_schedule", str, "none", "learning-rate schedule over each task's epochs, stepped per epoch: none, "
           "cosine (lr (1 + cos(pi e / E)) / 2 in epoch e) or step (x --lr-gamma at each of --lr-milestones)",
           choices=SCHEDULES),
    Option("warmup_epochs", int, 0, "epochs of linear learning-rate warm-up at the start of each task", minimum=0),
    Option("lr_milestones", int, [], "epochs (1-based counts of finished epochs) after which the step schedule "
           "multiplies the rate by --lr-gamma", minimum=1, nargs="*"),
    Option("lr_gamma", float, 0.1, "factor of the step schedule", minimum=0.0, exclusive_minimum=True, maximum=1.0),
    Option("grad_clip", float, 0.0, "clip the gradients' total L2 norm to this before each step (0: off)", minimum=0.0),
    Option("train_base", bool, True, "train the base model on the first task (off: the model as loaded, e.g. a "
           "causal:/bert: checkpoint, is the base: 'after task 0' is its evaluation, never trained, and fine-tuning "
           "starts at the stream's second task)", hashed_at_default=False),
    Option("amp", str, "off", "mixed precision of the loop: off, or bf16/fp16 autocast of the student's forward pass "
           "and task loss (CUDA only; penalties and teachers stay fp32)", choices=AMP),
    # how fine-tuning is driven (forgetting/onpolicy.py); with sft none of these is in the run id
    Option("objective", str, "sft", "how a task is trained: sft = cross-entropy on its targets; pg = group-relative "
           "policy gradient on the model's own sampled answers scored by --reward (GRPO; no clipping unless --pg-clip)",
           choices=OBJECTIVES),
    Option("pg_samples", int, 8, "pg: answers G sampled per input (at least 2: an answer's advantage is its reward "
           "minus its group's mean)", minimum=2),
    Option("pg_temperature", float, 1.0, "pg: temperature of the sampling distribution (and of the log-probabilities "
           "scored, as TRL's GRPO)", minimum=0.0, exclusive_minimum=True),
    Option("pg_max_new_tokens", int, 16, "pg, causal LMs: the longest sampled completion, in tokens", minimum=1),
    Option("pg_clip", float, 0.0, "pg: PPO-style ratio clipping epsilon against the sampling policy (0: off)",
           minimum=0.0),
    Option("pg_scale_std", bool, False, "pg: divide each advantage by its group's reward standard deviation (GRPO)"),
    Option("reward", str, "correct", "pg: the reward of a sampled answer: correct (1 if right, 0 otherwise; a task may "
           "declare a set of correct answers), a registered reward, or module:function"),
    # what a fine-tuning task's sft targets are, and what the base sees of later tasks: at their defaults in no run id
    Option("sft_targets", str, "label", "sft, fine-tuning tasks (1 on): label = cross-entropy on each example's target; "
           "oracle = on the frozen reference's distribution (the model at the task's start) restricted to the example's "
           "correct answers (Task.answers) and renormalised: the correct-answer distribution of least KL to it "
           "(classifiers)", choices=SFT_TARGETS, hashed_at_default=False),
    Option("base_preview", int, 0, "the base task (task 0) also trains on N training examples of task 1 (drawn once "
           "with a fixed seed, the same for every run), so that the base already answers some of the next task; task 1 still "
           "trains on all of its examples", minimum=0, hashed_at_default=False),
    Option("finetune_lr", float, 0.0, "learning rate of the fine-tuning tasks (1 on) where it differs from the base "
           "task's --lr (e.g. a pg rate well below the rate the base learns at; 0: --lr)", minimum=0.0,
           hashed_at_default=False),
    Option("learn_tasks", int, 0, "learn and measure only the first N tasks of the stream; the later ones (evaluation-only "
           "ones too) are left out (0: all)", minimum=0, hashed_at_default=False),
    Option("stop_at_accuracy", float, 0.0, "end a fine-tuning task (1 on; the base task runs its epochs) at the first "
           "evaluation (every --eval-every steps and each epoch's end) where its own test accuracy is at least A, "
           "0 < A <= 1; --epochs stays the cap (0: off, every task trains all its epochs)", minimum=0.0, maximum=1.0,
           hashed_at_default=False),
]
PG_OPTIONS = ("objective", "pg_samples", "pg_temperature", "pg_max_new_tokens", "pg_clip", "pg_scale_std", "reward")
CORE_OPTIONS = LOOP_OPTIONS  # the name before schema 2
LOOP_DEFAULTS = {o.name: o.default for o in LOOP_OPTIONS}

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Component:
    """One part of a run: its registered name, its hashed options and its unhashed settings."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        """Options and settings together: what the component is built with."""
        return {**self.options, **self.settings}


@dataclass
class RunConfig:
    stream: Component = field(default_factory=lambda: Component("split-digits", {"scenario": "domain"}))
    model: Component = field(default_factory=lambda: Component("mlp"))
    method: Component = field(default_factory=lambda: Component("kl"))
    loop: dict[str, Any] = field(default_factory=dict)
    # digests of the data files the stream reads (streams.data_fingerprint), set by registry.resolve:
    # editing a data file gives a new run id. Hashed only when not empty (no data files: ids as before).
    data_fingerprint: dict[str, str] = field(default_factory=dict)
    # where and how it runs: never part of the run id
    device: str = "auto"
    data_dir: str | None = None
    results_dir: str = "results"
    progress: bool = True
    log_to: list[str] = field(default_factory=list)  # experiment trackers (forgetting.tracking)

    # --- read-only views with the flat names used across the code ----------------------------
    @property
    def benchmark(self) -> str:
        return self.stream.name

    @property
    def scenario(self) -> str:
        return self.stream.options.get("scenario", "domain")

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def method_name(self) -> str:
        return self.method.name

    @property
    def hparams(self) -> dict[str, Any]:
        return self.method.values()

    @property
    def model_options(self) -> dict[str, Any]:
        return self.model.values()

    @property
    def stream_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.stream.values().items() if k != "scenario"}


    # --- serialisation and the run id ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """A config from ``to_dict``'s output (a config.json of schema 2)."""
        if d.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ValueError(f"config schema version {d.get('schema_version')!r}, expected {SCHEMA_VERSION}")
        comp = {k: Component(**d[k]) for k in ("stream", "model", "method") if k in d}
        rest = {k: d[k] for k in ("loop", "data_fingerprint", "device", "data_dir", "results_dir", "progress",
                                 "log_to") if k in d}
        return cls(**comp, **rest)

    def hashed_dict(self) -> dict[str, Any]:
        """What the run id hashes: the schema, each component's name and options, the loop."""
        d = {"schema_version": SCHEMA_VERSION, "loop": self.loop,
             **{k: {"name": c.name, "options": c.options}
                for k, c in (("stream", self.stream), ("model", self.model), ("method", self.method))}}
        if self.data_fingerprint:
            d["data_fingerprint"] = self.data_fingerprint
        return d

    @property
    def run_id(self) -> str:
        """A short hash of everything that changes the numbers (meaningful once resolved)."""
        blob = json.dumps(self.hashed_dict(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _loop_property(option: Option) -> property:
    name, default = option.name, option.default
    return property(lambda self: self.loop.get(name, default), doc=f"loop option {name}: {option.help}")


for _option in LOOP_OPTIONS:  # config.epochs, config.lr, ...: one read-only property per declared loop option
    setattr(RunConfig, _option.name, _loop_property(_option))


def flat_view(d: dict[str, Any]) -> dict[str, Any]:
    """A config.json of any schema as flat fields (benchmark, scenario, method, hparams, seed, ...), for reports."""
    if d.get("schema_version", 1) < 2:
        return dict(d)
    stream, model, method = (d.get(k) or {"name": "", "options": {}} for k in ("stream", "model", "method"))
    return {
        **(d.get("loop") or {}),
        "benchmark": stream["name"], "scenario": stream.get("options", {}).get("scenario"),
        "model": model["name"], "method": method["name"],
        "hparams": {**method.get("options", {}), **method.get("settings", {})},
        "model_options": {**model.get("options", {}), **model.get("settings", {})},
        "stream_options": {k: v for k, v in {**stream.get("options", {}), **stream.get("settings", {})}.items()
                           if k != "scenario"},
        **{k: d.get(k) for k in ("device", "data_dir", "results_dir", "progress", "schema_version")},
        "log_to": d.get("log_to") or [],
    }
