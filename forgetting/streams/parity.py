"""ParityMNIST (Shenfeld, Pari & Agrawal 2025, "RL's Razor"), from the MNIST images in ``--data-dir``.

One model, one shared head of 10 outputs, a two-way task indicator appended to the 784 pixels (inputs of 786):
- task 0, the base (indicator 0): digit identity on permuted-MNIST images (one fixed pixel permutation), trained
  jointly with a little parity data (``--base-parity`` images, indicator 1, labelled with the digit itself: a
  correct answer, so the base already answers some parity questions right and prefers some right answers);
  its test set is the permuted images alone: the old task whose forgetting is measured;
- task 1, the new task (indicator 1): the parity of an unpermuted digit, where *every* digit of the right parity
  is a correct answer (``Task.answers``); the training targets that ``sft`` fits are ``--parity-targets``:
  ``fixed`` (even → 0, odd → 1), ``random`` (one random correct digit per image, drawn once) or ``digit``.
The paper's old task is FashionMNIST, which is not among the embedded data; a permuted digit is, like a
garment, an input the new task never shows, with 10 classes of its own on the same outputs, and its answers
are no solution of the new task. Only the ``domain`` scenario (one shared head) fits this design.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import BadInput
from ..options import Option
from .base import Task, TaskStream, TensorData, layout_for
from .mnist import data_fingerprint, load_arrays  # noqa: F401  (the run id hashes the IDX files read)

SEED = 0
OPTIONS = (
    Option("parity_targets", str, "fixed", "parity-mnist: the new task's training targets for sft: fixed (even -> 0, "
           "odd -> 1), random (one random correct digit per image) or digit (the digit itself); every digit of "
           "the right parity is a correct answer whichever is chosen", choices=("fixed", "random", "digit")),
    Option("base_parity", int, 200, "parity-mnist: parity images (labelled with their digit) in the base task",
           minimum=0),
    Option("old_train", int, 4000, "parity-mnist: permuted images of the old task's training set", minimum=1),
)


def parity_answers() -> torch.Tensor:
    """[10, 10] bool: row y holds the digits of y's parity."""
    d = torch.arange(10)
    return (d.unsqueeze(1) % 2) == (d.unsqueeze(0) % 2)


def with_indicator(x: np.ndarray, task: int) -> torch.Tensor:
    flat = torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float32)
    indicator = torch.zeros(len(x), 2)
    indicator[:, task] = 1.0
    return torch.cat([flat, indicator], 1)


def build(scenario: str, options: dict) -> TaskStream:
    if scenario != "domain":
        raise BadInput(f"--scenario {scenario}: parity-mnist has one shared head of 10 outputs and a task indicator; "
                       "allowed: domain")
    x_tr, x_te, y_tr, y_te, info = load_arrays(options.get("data_dir"), options.get("download", False))
    n_old, n_base = options.get("old_train", 4000), options.get("base_parity", 200)
    if n_old + n_base >= len(x_tr):
        raise BadInput(f"--old-train {n_old} and --base-parity {n_base}: together at least the {len(x_tr)} training "
                       "images; allowed: a sum below it (the rest are the new task's)")
    rng = np.random.default_rng(SEED)
    perm = rng.permutation(784)
    order = rng.permutation(len(x_tr))
    old, base, new = order[:n_old], order[n_old:n_old + n_base], order[n_old + n_base:]
    permuted = x_tr.reshape(len(x_tr), -1)[:, perm]
    y_new = torch.as_tensor(y_tr[new])
    kind = options.get("parity_targets", "fixed")
    if kind == "fixed":
        targets = y_new % 2
    elif kind == "random":
        g = torch.Generator().manual_seed(SEED)
        targets = torch.multinomial(parity_answers()[y_new].float(), 1, generator=g).squeeze(1)
    else:
        targets = y_new
    base_x = torch.cat([with_indicator(permuted[old], 0), with_indicator(x_tr[base], 1)])
    base_y = torch.cat([torch.as_tensor(y_tr[old]), torch.as_tensor(y_tr[base])])
    layout = layout_for("domain", 2, [10, 10])
    digits = list(range(10))
    tasks = [
        Task(0, "permuted-digit (+ a little parity)", TensorData(base_x, base_y),
             TensorData(with_indicator(x_te.reshape(len(x_te), -1)[:, perm], 0), torch.as_tensor(y_te)),
             digits, digits),
        Task(1, f"parity ({kind} targets)", TensorData(with_indicator(x_tr[new], 1), targets),
             TensorData(with_indicator(x_te, 1), torch.as_tensor(y_te)), digits, digits, answers=parity_answers()),
    ]
    info = {**info, "old task": f"{n_old} permuted images", "base parity images": n_base,
            "new task train images": len(new)}
    return TaskStream("parity-mnist", "domain", tasks, layout, "tensor", (786,), info=info)
