"""Task streams by name: the built-in benchmarks, each with the options it reads (the registry lists them)."""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import BadInput
from ..options import Option
from . import files, hub, olora, text, trace
from .parity import OPTIONS as PARITY_OPTIONS
from .base import CLASS_OUTPUTS, SCENARIOS, Batch, HeadLayout, Task, TaskData, TaskStream, TensorData, iterate_batches, layout_for


@dataclass(frozen=True)
class Benchmark:
    """A registered stream: its builder ``build(scenario, options) -> TaskStream`` (as "module:function" or
    the function itself), the options it reads, whether it reads ``--data-dir``, its inputs
    (``tensor`` or ``text``; text streams are tokenised by the model's tokenizer) and the objective its
    targets are for (``forgetting.objectives``; a model may declare its own, as the causal LMs do)."""

    build: Any
    options: tuple[Option, ...] = ()
    reads_data_dir: bool = False
    inputs: str = "tensor"
    objective: str = "classification"

    def builder(self) -> Callable:
        if callable(self.build):
            return self.build
        module, _, fn = self.build.partition(":")
        return getattr(importlib.import_module(module), fn)


N_TASKS = Option("n_tasks", int, 5, "number of tasks of a permuted stream (task 0 unpermuted)", minimum=2, maximum=100)
DOWNLOAD = Option("download", bool, False, "download the data (torchvision, Hugging Face hub) when a network is present",
                  hashed=False)
SCENARIO = Option("scenario", str, "domain", "task (a head per task, task id given), domain (one shared head), class "
                  "(one head over all classes)", choices=SCENARIOS)
CLASS_OUTPUTS_OPTION = Option("class_outputs", str, "seen", "class scenario: seen = only the outputs of the tasks so "
                              "far take part in the cross-entropy while a task trains and in the evaluation after it "
                              "(van de Ven & Tolias 2019); all = every output from the first task on (other scenarios "
                              "ignore it: it does not change their run id)",
                              choices=CLASS_OUTPUTS)
AUGMENT = Option("augment", bool, False, "train-time augmentation of image streams: random crop (padding 4) and "
                 "horizontal flip (switches the KL teacher cache off)")
TRAIN_PER_CLASS = Option("train_per_class", int, 0, "keep this many training images per class, drawn with a fixed "
                         "seed (0: all); for small CPU studies", minimum=0)
CIFAR100_TASKS = Option("n_tasks", int, 10, "number of tasks of split-cifar100: 10 (of 10 classes) or 20 (of 5)",
                        choices=(10, 20))
TRUST_DATA = Option("trust_data", bool, False, "read image files that are not the official archive's (your own "
                    "CIFAR variant): they are pickles, which can run code when read; only for files you made",
                    hashed=False)
IMAGE_OPTIONS = (AUGMENT, TRAIN_PER_CLASS, DOWNLOAD, TRUST_DATA)

BENCHMARKS: dict[str, Benchmark] = {
    "split-digits": Benchmark("forgetting.streams.digits:build_split"),
    "permuted-digits": Benchmark("forgetting.streams.digits:build_permuted", (N_TASKS,)),
    "split-mnist": Benchmark("forgetting.streams.mnist:build_split", (DOWNLOAD,), reads_data_dir=True),
    "permuted-mnist": Benchmark("forgetting.streams.mnist:build_permuted", (N_TASKS, DOWNLOAD), reads_data_dir=True),
    "split-cifar10": Benchmark("forgetting.streams.cifar:build_split10", IMAGE_OPTIONS, reads_data_dir=True),
    "split-cifar100": Benchmark("forgetting.streams.cifar:build_split100", (CIFAR100_TASKS, *IMAGE_OPTIONS),
                                reads_data_dir=True),
    "parity-mnist": Benchmark("forgetting.streams.parity:build", (*PARITY_OPTIONS, DOWNLOAD), reads_data_dir=True),
    "uci-sentiment": Benchmark("forgetting.streams.text_local:build_uci", (*text.OPTIONS, DOWNLOAD), True, "text"),
    "ag-news": Benchmark("forgetting.streams.text_local:build_ag_news", (*text.OPTIONS, DOWNLOAD), True, "text"),
    "clinc150": Benchmark("forgetting.streams.text_local:build_clinc", (*text.OPTIONS, DOWNLOAD), True, "text"),
    "lm-domains": Benchmark("forgetting.streams.text_local:build_lm_domains", tuple(text.OPTIONS), True, "text"),
    "text-file": Benchmark("forgetting.streams.files:build", (*text.OPTIONS, *files.OPTIONS), False, "text"),
    "five-datasets": Benchmark("forgetting.streams.hub:build", (*text.OPTIONS, *hub.OPTIONS), False, "text"),
    "trace": Benchmark("forgetting.streams.trace:build", (*text.OPTIONS, *trace.OPTIONS), True, "text"),
    "olora": Benchmark("forgetting.streams.olora:build", (*text.OPTIONS, *olora.OPTIONS), True, "text"),
}


def default_data_dir() -> str | None:
    """FORGETTING_DATA_DIR, else ../shared/data beside the project when it exists."""
    env = os.environ.get("FORGETTING_DATA_DIR")
    if env:
        return env
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def data_fingerprint(benchmark: str | Benchmark, options: dict) -> dict:
    """Digests of the data files the stream reads (``data_fingerprint(options)`` of its builder, else of its
    builder's module, a user's own included), or {} when there is none: editing the data gives a new run id."""
    spec = BENCHMARKS[benchmark] if isinstance(benchmark, str) else benchmark
    build = spec.builder()
    fingerprint = getattr(build, "data_fingerprint", None) or getattr(inspect.getmodule(build), "data_fingerprint", None)
    return fingerprint({**{o.name: o.default for o in spec.options}, **options}) if fingerprint is not None else {}


def build_stream(benchmark: str | Benchmark, scenario: str, options: dict) -> TaskStream:
    """The stream, or BadInput for unreadable data. ``options`` may omit defaults; text streams need
    ``options["tokenizer"]``, a function from the training texts to ``(tokenizer, source)`` (the model's)."""
    spec = BENCHMARKS[benchmark] if isinstance(benchmark, str) else benchmark
    name = benchmark if isinstance(benchmark, str) else getattr(spec.build, "__name__", "stream")
    opts = {**{o.name: o.default for o in spec.options}, **options}
    try:
        stream = spec.builder()(scenario, opts)
    except (ValueError, KeyError) as e:
        if isinstance(e, BadInput):
            raise
        raise BadInput(f"--benchmark {name}: {e}") from None
    stream.layout.class_outputs = opts.get("class_outputs", "seen")
    return stream


__all__ = [
    "BENCHMARKS", "SCENARIOS", "Batch", "HeadLayout", "Task", "TaskData", "TaskStream", "TensorData",
    "Benchmark", "build_stream", "data_fingerprint", "default_data_dir", "iterate_batches", "layout_for",
]
