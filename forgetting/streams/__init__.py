"""Task streams by name. Each entry: (module, builder function, whether it reads --data-dir)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..errors import BadInput
from ..options import Option
from . import files, hub, text
from .base import CLASS_OUTPUTS, SCENARIOS, Batch, HeadLayout, Task, TaskData, TaskStream, TensorData, iterate_batches, layout_for

BENCHMARKS = {
    "split-digits": ("forgetting.streams.digits", "build_split", False),
    "permuted-digits": ("forgetting.streams.digits", "build_permuted", False),
    "split-mnist": ("forgetting.streams.mnist", "build_split", True),
    "permuted-mnist": ("forgetting.streams.mnist", "build_permuted", True),
    "uci-sentiment": ("forgetting.streams.text_local", "build_uci", True),
    "ag-news": ("forgetting.streams.text_local", "build_ag_news", True),
    "clinc150": ("forgetting.streams.text_local", "build_clinc", True),
    "text-file": ("forgetting.streams.files", "build", False),
    "five-datasets": ("forgetting.streams.hub", "build", False),
}

OPTIONS = [
    Option("n_tasks", int, 5, "number of tasks of a permuted stream (task 0 unpermuted)", minimum=2, maximum=100),
    Option("class_outputs", str, "seen", "class scenario: seen = only the outputs of the tasks so far take part in "
           "the cross-entropy while a task trains and in the evaluation after it (van de Ven & Tolias 2019); "
           "all = every output from the first task on", choices=CLASS_OUTPUTS),
    Option("download", bool, False, "download the data (torchvision, Hugging Face hub) when a network is present"),
    *text.OPTIONS, *files.OPTIONS, *hub.OPTIONS,
]


def default_data_dir() -> str | None:
    """FORGETTING_DATA_DIR, else ../shared/data beside the project when it exists."""
    env = os.environ.get("FORGETTING_DATA_DIR")
    if env:
        return env
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def needs_data_dir(benchmark: str) -> bool:
    return BENCHMARKS[benchmark][2]


def build_stream(benchmark: str, scenario: str, options: dict) -> TaskStream:
    """The stream, or BadInput naming an unknown benchmark or scenario, or unreadable data."""
    if benchmark not in BENCHMARKS:
        raise BadInput(f"--benchmark: unknown benchmark {benchmark!r}, allowed: {', '.join(BENCHMARKS)}")
    if scenario not in SCENARIOS:
        raise BadInput(f"--scenario: unknown scenario {scenario!r}, allowed: {', '.join(SCENARIOS)}")
    module, fn, _ = BENCHMARKS[benchmark]
    try:
        stream = getattr(importlib.import_module(module), fn)(scenario, options)
    except (ValueError, KeyError) as e:
        if isinstance(e, BadInput):
            raise
        raise BadInput(f"--benchmark {benchmark}: {e}") from None
    stream.layout.class_outputs = options.get("class_outputs", "seen")
    return stream


__all__ = [
    "BENCHMARKS", "SCENARIOS", "Batch", "HeadLayout", "Task", "TaskData", "TaskStream", "TensorData",
    "build_stream", "default_data_dir", "iterate_batches", "layout_for", "needs_data_dir",
]
