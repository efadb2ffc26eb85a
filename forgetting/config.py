"""The full description of one run; its hash names the run's results directory."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .options import Option

SCHEMA_VERSION = 1

# Options of the loop itself; methods, models and streams declare their own.
CORE_OPTIONS = [
    Option("epochs", int, 5, "epochs per task", minimum=1),
    Option("batch_size", int, 32, "training batch size", minimum=1),
    Option("lr", float, 1e-3, "learning rate (Adam; a fresh optimiser per task)", minimum=0.0, exclusive_minimum=True),
    Option("seed", int, 0, "seed of model initialisation, shuffling and dropout", minimum=0),
    Option("eval_every", int, 0, "also evaluate every N training steps (0: after every epoch only)", minimum=0),
    Option("eval_batch_size", int, 1024, "evaluation batch size", minimum=1),
    Option("eval_subset", int, 0, "evaluate each task on a fixed random subset of this many test examples "
           "(0: the whole test set); for long runs", minimum=0),
]

# Keys that say where things are, not what is computed: left out of the run's hash.
UNHASHED = ("data_dir", "results_dir", "device", "progress")


@dataclass
class RunConfig:
    benchmark: str = "split-digits"
    scenario: str = "domain"
    model: str = "mlp"
    method: str = "kl"
    hparams: dict[str, Any] = field(default_factory=dict)  # the method's hyper-parameters
    model_options: dict[str, Any] = field(default_factory=dict)
    stream_options: dict[str, Any] = field(default_factory=dict)
    # digests of the data files the stream reads (streams.data_fingerprint), set by resolved():
    # editing a data file gives a new run id. Hashed only when not empty (no files: ids as before).
    data_fingerprint: dict[str, str] = field(default_factory=dict)
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    eval_every: int = 0
    eval_batch_size: int = 1024
    eval_subset: int = 0
    device: str = "auto"
    data_dir: str | None = None
    results_dir: str = "results"
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schema_version"] = SCHEMA_VERSION
        return d

    def to_dict_no_schema(self) -> dict[str, Any]:
        """The fields only, for ``RunConfig(**d)`` with some of them replaced."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def resolved(self) -> "RunConfig":
        """A copy with every option checked and defaults filled in (BadInput on a bad value).

        Configs from the CLI, suite files and Python code all pass through here, so a run's
        hash does not depend on whether a default was spelled out.
        """
        from . import methods, models, streams
        from .errors import BadInput
        from .options import check_all

        if self.benchmark not in streams.BENCHMARKS:
            raise BadInput(f"benchmark: unknown benchmark {self.benchmark!r}, allowed: {', '.join(streams.BENCHMARKS)}")
        if self.scenario not in streams.SCENARIOS:
            raise BadInput(f"scenario: unknown scenario {self.scenario!r}, allowed: {', '.join(streams.SCENARIOS)}")
        core = check_all(CORE_OPTIONS, {o.name: getattr(self, o.name) for o in CORE_OPTIONS}, where="")
        d = self.to_dict()
        d.pop("schema_version")
        d.update(core)
        d["hparams"] = check_all(methods.method_options(self.method), self.hparams, where="method option ")
        d["model_options"] = check_all(models.model_module(self.model).OPTIONS, self.model_options, where="model option ")
        d["stream_options"] = check_all(streams.OPTIONS, self.stream_options, where="stream option ")
        d["data_fingerprint"] = streams.data_fingerprint(self.benchmark, {**d["stream_options"], "data_dir": self.data_dir})
        return RunConfig(**d)

    def hashed_dict(self) -> dict[str, Any]:
        """``to_dict`` less UNHASHED, shallow (``asdict``'s deep copy made a 12,000-run sweep slow)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in UNHASHED}
        if not d["data_fingerprint"]:
            del d["data_fingerprint"]
        d["schema_version"] = SCHEMA_VERSION
        return d

    @property
    def run_id(self) -> str:
        """A short hash of everything that changes the numbers (not paths or the device)."""
        blob = json.dumps(self.hashed_dict(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]
