"""Task-boundary checkpoints, so a killed run resumes where its last finished task ended.

At the end of task t the run saves ``checkpoints/task_<t>.safetensors`` (the model's weights,
loadable on their own with ``safetensors.torch.load_file``) and ``checkpoints/task_<t>.state.pt``
(what else resumption needs to give the same rows as an uninterrupted run: the random number
generators, the global step, the methods' state). Both are written atomically.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .results import atomic_write

CHECKPOINTS = "checkpoints"
_WEIGHTS = re.compile(r"task_(\d+)\.safetensors$")


def _plain(obj):
    """Method state made picklable: generators become their state (restored by ``_restore``)."""
    if isinstance(obj, torch.Generator):
        return {"__generator_state__": obj.get_state()}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    return obj


def _restore(saved, current):
    if isinstance(saved, dict) and "__generator_state__" in saved:
        gen = current if isinstance(current, torch.Generator) else torch.Generator()
        gen.set_state(saved["__generator_state__"])
        return gen
    if isinstance(saved, dict):
        cur = current if isinstance(current, dict) else {}
        return {k: _restore(v, cur.get(k)) for k, v in saved.items()}
    if isinstance(saved, list):
        cur = current if isinstance(current, list) and len(current) == len(saved) else [None] * len(saved)
        return [_restore(v, c) for v, c in zip(saved, cur)]
    return saved


def weights_path(run_dir: Path, task: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"task_{task}.safetensors"


def save_boundary(run_dir: Path, trainer, task: int, elapsed: float) -> None:
    folder = Path(run_dir) / CHECKPOINTS
    folder.mkdir(exist_ok=True)
    # cloned: tied weights (a causal LM's embedding and output layer) share memory, which safetensors refuses
    weights = {k: v.detach().cpu().clone().contiguous() for k, v in trainer.model.state_dict().items()}
    state = {
        "task": task,
        "global_step": trainer.global_step,
        "elapsed": elapsed,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "generator": trainer.generator.get_state(),
        "methods": [_plain(vars(m)) for m in trainer.methods],
    }
    atomic_write(folder / f"task_{task}.state.pt", lambda tmp: torch.save(state, tmp))
    atomic_write(weights_path(run_dir, task), lambda tmp: save_file(weights, tmp, metadata={"task": str(task)}))


def last_boundary(run_dir: Path) -> int | None:
    """The last task whose weights and state were both saved, or None."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    done = [int(m.group(1)) for p in folder.iterdir() if (m := _WEIGHTS.match(p.name))
            and (folder / f"task_{m.group(1)}.state.pt").is_file()]
    return max(done) if done else None


def load_weights(run_dir: Path, task: int, device) -> dict:
    return load_file(str(weights_path(run_dir, task)), device=str(device))


def restore_boundary(run_dir: Path, trainer, task: int) -> float:
    """Put the trainer where it stood at the end of ``task``; returns the run's elapsed seconds then."""
    from .train import frozen_copy

    state = torch.load(Path(run_dir) / CHECKPOINTS / f"task_{task}.state.pt", weights_only=False)
    trainer.model.load_state_dict(load_weights(run_dir, task, trainer.device))
    if task == 0:
        trainer.base_model = frozen_copy(trainer.model)
    else:
        base = frozen_copy(trainer.model)
        base.load_state_dict(load_weights(run_dir, 0, trainer.device))
        trainer.base_model = base
    trainer.previous_model = frozen_copy(trainer.model) if task > 0 else trainer.base_model
    trainer.global_step = state["global_step"]
    for method, saved in zip(trainer.methods, state["methods"]):
        vars(method).update(_restore(saved, vars(method)))
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    trainer.generator.set_state(state["generator"])
    return float(state["elapsed"])
