"""Preparing a run: the device, determinism, seeds, and the stream, model and methods built and checked
before any file is written (``prepare``)."""

from __future__ import annotations

import logging
import os
import random
import sys

import numpy as np
import torch

from . import registry
from .config import RunConfig
from .errors import BadInput
from .objectives import objective_for

log = logging.getLogger("forgetting")


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device: 'cuda' requested but no CUDA device is available, allowed here: cpu, auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without importing TorchInductor.

    The torch function also sets ``torch._inductor.config.deterministic``, and importing that module
    imports TorchInductor's compiler modules (0.26 s of a default run's start; TorchDynamo itself comes
    with the first ``torch.optim`` optimiser anyway). The harness never compiles, so it sets the flag
    only where Inductor is already loaded; a later import of Inductor (a user's ``torch.compile``)
    reads its own default.
    """
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


def determinism_settings(device: torch.device) -> dict:
    """Ask torch for deterministic kernels (warning where one has none) and say what was set."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deterministic_algorithms()
    torch.backends.cudnn.benchmark = False
    return {
        "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "torch_num_threads": torch.get_num_threads(),
    }


def warn_one_class_tasks(stream) -> list[str]:
    """In ``task`` a task with one class gets a one-output head: nothing to learn, accuracy 100%. Say so.
    In ``class`` and ``domain`` a stream where no task holds two classes, or a task that trains a single
    output, learns nothing either: BadInput."""
    if stream.scenario != "task":
        check_two_classes(stream)
        return []
    lonely = [task.name for task, outs in zip(stream.tasks, stream.layout.task_outputs) if len(outs) < 2]
    for name in lonely:
        log.warning("task %r has one class: with --scenario task its head has one output, so its loss is 0 and its "
                    "accuracy 100%% whatever the model does (give it two classes, or use --scenario domain or class)",
                    name)
    return lonely


def check_two_classes(stream) -> None:
    """BadInput for a ``class``/``domain`` stream in which nothing is learned (see warn_one_class_tasks)."""
    if "class_distribution" not in objective_for(stream).provides:
        return  # a language-modelling (or regression) stream has no classes
    layout = stream.layout
    for t, task in enumerate(stream.tasks):
        active = layout.active_outputs(t)
        if (layout.n_outputs if active is None else len(active)) < 2:
            raise BadInput(f"--scenario {stream.scenario}: task {task.name!r} trains a classifier with one output, "
                           "which is right whatever the model does; allowed: a first task with two classes or more")
    found = [(getattr(task.train, "targets", None), getattr(task.test, "targets", None)) for task in stream.tasks]
    if (all(isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) for a, b in found)
            and all(int(torch.cat([a, b]).unique().numel()) < 2 for a, b in found)):
        raise BadInput(f"--scenario {stream.scenario}: every task holds one class ({', '.join(t.name for t in stream.tasks)}),"
                       " so no task asks the model to tell classes apart; allowed: tasks with two classes or more")


def build_stream_for(config: RunConfig):
    """The run's stream; a text stream is encoded with the tokenizer the run's model brings."""
    from .streams import build_stream

    extra = {"data_dir": config.data_dir, "tokenizer": registry.tokenizer_maker(config.model.name, config.model.values())}
    return build_stream(registry.stream(config.benchmark), config.scenario, {**config.stream_options, **extra})


def prepare(config: RunConfig, device: torch.device | None = None):
    """Everything a run needs, built and checked before any file is written (``device``: this rank's, when a
    launcher started several processes; else the one ``config.device`` names).

    Data flows one way: the model's tokenizer maker (text models) goes to the stream, which
    encodes its texts with it; the model is then built for the stream's layout.
    """
    from .models import split_spec

    device = resolve_device(config.device) if device is None else device
    spec = registry.model(config.model.name)
    if spec.check_device is not None:
        spec.check_device(config.model.values(), device)
    _, source = split_spec(config.model.name)
    model_values = config.model.values()
    stream = build_stream_for(config)
    stream.objective = registry.objective_of(config.benchmark, config.model.name).name  # chosen by resolve
    warn_one_class_tasks(stream)
    check_loop_on_stream(config, stream)
    methods = registry.build_methods(config.method.name, config.hparams)
    for m in methods:  # options that cannot work on this stream
        m.check_stream(stream)
    seed_everything(config.seed)
    try:
        model = spec.build(stream, model_values, source)
    except (ValueError, OSError) as e:
        if isinstance(e, BadInput):
            raise
        raise BadInput(f"--model {config.model.name}: {e}") from None
    return device, stream, model, methods


def check_loop_on_stream(config: RunConfig, stream) -> None:
    """The loop options that depend on the stream's tasks, checked (BadInput in one line) before any file is written;
    ``--learn-tasks`` applied (the stream cut to its first N tasks)."""
    n = config.learn_tasks
    if n:
        if n > stream.n_learned:
            raise BadInput(f"--learn-tasks {n}: benchmark {config.benchmark!r} has {stream.n_learned} tasks to learn; "
                           f"allowed: 1 to {stream.n_learned} (0: all)")
        stream.tasks, stream.eval_only = stream.tasks[:n], 0
    if config.base_preview:
        if stream.n_learned < 2:
            raise BadInput(f"--base-preview {config.base_preview}: needs a second task to learn (this run learns "
                           f"{stream.n_learned})")
        if stream.scenario == "class":
            raise BadInput(f"--base-preview {config.base_preview}: not in the class scenario (task 1's classes are "
                           "not active while the base trains); allowed: task, domain")
    if config.sft_targets == "oracle" and not any(getattr(t, "answers", None) is not None
                                                  for t in stream.tasks[1:stream.n_learned]):
        raise BadInput(f"--sft-targets oracle: no fine-tuning task of benchmark {config.benchmark!r} declares a set of "
                       "correct answers (Task.answers), so it would be plain sft; allowed: label, or oracle on e.g. "
                       "parity-mnist")
    if config.objective == "pg":
        from .rewards import reward

        check = getattr(reward(config.reward), "check_stream", None)
        if check is not None:
            check(stream)
