"""Task-boundary checkpoints, so a killed run resumes where its last finished task ended.

At the end of task t the run saves ``checkpoints/task_<t>.safetensors`` (the model's weights,
loadable on their own with ``safetensors.torch.load_file``) and ``checkpoints/task_<t>.state.pt``
(what else resumption needs to give the same rows as an uninterrupted run: the random number
generators, the global step, and each method's ``state_dict()``). Both are written atomically.
The run serializes them at the boundary and writes them while the next task trains (``running.Recorder``,
``RunWriter.task_done``); the manifest says the task is complete only once they are on disk.

A checkpoint may come from someone else (a results directory received, a shared disk), so
nothing in it runs code: the state file is read with ``torch.load(weights_only=True)``, whose
unpickler builds only tensors and plain containers (dict, list, tuple, numbers, strings) and
refuses any other object; numpy's generator state is saved as plain numbers for that reason.
A file that names anything else is a CorruptCheckpoint, like a truncated one.
"""

from __future__ import annotations

import io
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save as safetensors_save

from .errors import first_line
from .results import atomic_write

CHECKPOINTS = "checkpoints"
_WEIGHTS = re.compile(r"task_(\d+)\.safetensors$")


def weights_path(run_dir: Path, task: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"task_{task}.safetensors"


def _real_folder(run_dir: Path) -> Path:
    """``RUN_DIR/checkpoints``, a link there replaced by a folder: a run never writes outside its directory
    (a link planted in a run directory received from elsewhere would point its writes anywhere)."""
    folder = Path(run_dir) / CHECKPOINTS
    if folder.is_symlink():
        folder.unlink()
    folder.mkdir(exist_ok=True)
    return folder


def save_boundary(run_dir: Path, trainer, task: int, elapsed: float) -> None:
    write_boundary(run_dir, boundary_files(trainer, task, elapsed))


def boundary_files(trainer, task: int, elapsed: float) -> dict[str, bytes]:
    """The two files of the checkpoint after ``task``, serialized now (file name -> bytes): what is written is
    the state at the boundary, however long the writing takes (the run writes them in the background)."""
    # cloned: tied weights (a causal LM's embedding and output layer) share memory, which safetensors refuses
    # under FSDP the whole weights gathered at the boundary (``Trainer.whole_state_dict``): the file one process writes
    whole = trainer.whole_state_dict() if hasattr(trainer, "whole_state_dict") else trainer.model.state_dict()
    weights = {k: v.detach().cpu().clone().contiguous() for k, v in whole.items()}
    state = {
        "task": task,
        "global_step": trainer.global_step,
        "elapsed": elapsed,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy_rng": _plain_numpy_state(np.random.get_state()),
        "python_rng": random.getstate(),
        "generator": trainer.generator.get_state(),
        "methods": [m.state_dict() for m in trainer.methods],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    # the state first: a task's weights without its state are not a boundary (``boundaries``)
    return {f"task_{task}.state.pt": buffer.getvalue(),
            weights_path(Path("."), task).name: save_weights(weights, {"task": str(task)})}


def write_boundary(run_dir: Path, files: dict[str, bytes]) -> None:
    """The checkpoint's files, each written whole and synced (``atomic_write``), in order."""
    folder = _real_folder(run_dir)
    for name, data in files.items():
        atomic_write(folder / name, lambda tmp, data=data: Path(tmp).write_bytes(data))


def save_weights(weights: dict, metadata: dict) -> bytes:
    """The safetensors file of ``weights`` (byte for byte what ``save_file`` writes)."""
    return safetensors_save(weights, metadata=metadata)


def _plain_numpy_state(state: tuple) -> tuple:
    """numpy's legacy generator state (name, uint32 keys, pos, has_gauss, cached) with the keys as a
    list of ints: a numpy array would need numpy's reconstructors in the allow-list of the loader."""
    name, keys, pos, has_gauss, cached = state
    return name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)


def _numpy_state(plain) -> tuple:
    name, keys, pos, has_gauss, cached = plain
    return name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached


def clear_checkpoints(run_dir: Path) -> None:
    """A fresh start: no checkpoint of an earlier attempt may be resumed from (a link is removed, not followed)."""
    folder = Path(run_dir) / CHECKPOINTS
    if folder.is_symlink():
        folder.unlink()
    shutil.rmtree(folder, ignore_errors=True)


def boundaries(run_dir: Path) -> list[int]:
    """The tasks whose weights and state were both saved, last first (none in a linked folder: it is not the run's)."""
    folder = Path(run_dir) / CHECKPOINTS
    if folder.is_symlink() or not folder.is_dir():
        return []
    return sorted((int(m.group(1)) for p in folder.iterdir() if (m := _WEIGHTS.match(p.name))
                   and (folder / f"task_{m.group(1)}.state.pt").is_file()), reverse=True)


def last_boundary(run_dir: Path) -> int | None:
    """The last task whose weights and state were both saved, or None."""
    done = boundaries(run_dir)
    return done[0] if done else None


class CorruptCheckpoint(Exception):
    """A checkpoint file that cannot be read back (truncated, overwritten, from another model)."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


def load_weights(run_dir: Path, task: int, device, like: dict | None = None) -> dict:
    """The weights saved at the end of ``task``; CorruptCheckpoint when unreadable or unlike ``like``."""
    path = weights_path(run_dir, task)
    try:
        weights = load_file(str(path), device=str(device))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own kinds for a damaged file
        raise CorruptCheckpoint(path, first_line(e)[:200]) from None
    if like is not None:
        if weights.keys() != like.keys():
            raise CorruptCheckpoint(path, "its tensors are not the model's")
        bad = next((k for k, v in weights.items() if v.shape != like[k].shape), None)
        if bad is not None:
            raise CorruptCheckpoint(path, f"tensor {bad!r} has shape {tuple(weights[bad].shape)}, "
                                          f"the model's is {tuple(like[bad].shape)}")
    return weights


STATE_KEYS = ("task", "global_step", "elapsed", "torch_rng", "cuda_rng", "numpy_rng", "python_rng", "generator", "methods")


def load_state(run_dir: Path, task: int, n_methods: int) -> dict:
    path = Path(run_dir) / CHECKPOINTS / f"task_{task}.state.pt"
    try:
        # weights_only: tensors and plain containers only; a pickle naming any other callable is refused
        state = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign pickle raises EOFError, UnpicklingError...
        raise CorruptCheckpoint(path, first_line(e)[:200]) from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS) or state["task"] != task:
        raise CorruptCheckpoint(path, "not a task-boundary state of this run")
    if len(state["methods"]) != n_methods:
        raise CorruptCheckpoint(path, f"it holds the state of {len(state['methods'])} methods, the run has {n_methods}")
    return state


def restore_boundary(run_dir: Path, trainer, task: int) -> float:
    """Put the trainer where it stood at the end of ``task``; returns the run's elapsed seconds then.

    Every file is read and checked before anything is changed, so on CorruptCheckpoint the
    trainer is as it was.
    """
    from .teacher import frozen_copy

    like = trainer.model.state_dict()
    state = load_state(run_dir, task, len(trainer.methods))
    weights = load_weights(run_dir, task, trainer.device, like)
    base_weights = weights if task == 0 else load_weights(run_dir, 0, trainer.device, like)
    if hasattr(trainer, "load_weights"):  # our loop: under FSDP each rank shards the weights it read
        trainer.load_weights(weights)
        whole = trainer.whole_model(weights)
    else:
        trainer.model.load_state_dict(weights)
        whole = trainer.model
    if task == 0:
        trainer.base_model = frozen_copy(whole)
    else:
        base = frozen_copy(whole)
        base.load_state_dict(base_weights)
        trainer.base_model = base
    trainer.previous_model = frozen_copy(whole) if task > 0 else trainer.base_model
    trainer.global_step = state["global_step"]
    for method, saved in zip(trainer.methods, state["methods"]):
        method.load_state_dict(saved)
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    np.random.set_state(_numpy_state(state["numpy_rng"]))
    random.setstate(state["python_rng"])
    trainer.generator.set_state(state["generator"])
    return float(state["elapsed"])


def restore_last_readable(run_dir: Path, trainer) -> tuple[int | None, float, list[str]]:
    """Restore the last boundary that reads: (its task or None, elapsed seconds, the files that did not read)."""
    problems = []
    for task in boundaries(run_dir):
        try:
            return task, restore_boundary(run_dir, trainer, task), problems
        except CorruptCheckpoint as e:
            problems.append(str(e))
    return None, 0.0, problems
