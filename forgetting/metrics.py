"""Pure functions from tidy metric rows to the numbers papers report.

A[t][k] is the accuracy on task k's test set after training on task t (t = 0: the base task),
read at the last epoch of task t. With T tasks:

- average accuracy after task t: mean over k <= t of A[t][k]
- forgetting, max-based (Chaudhry et al. 2018): for k < T-1, max over l in [k, T-1) of A[l][k]
  minus A[T-1][k]; averaged over k < T-1
- forgetting, first-based (Avalanche's definition): A[k][k] - A[T-1][k], averaged over k < T-1
- backward transfer (Lopez-Paz & Ranzato 2017): mean over k < T-1 of A[T-1][k] - A[k][k]
  (= minus the first-based forgetting)
- forward transfer: mean over k >= 1 of A[k-1][k] - b_k, b_k the untrained model's accuracy
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def final_epoch_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows evaluated at the end of each trained task (its last epoch)."""
    ep = rows[rows["phase"] == "epoch"]
    last = ep.groupby("trained_task")["epoch"].transform("max")
    return ep[ep["epoch"] == last]


def accuracy_matrix(rows: pd.DataFrame) -> np.ndarray:
    """A[t][k] for the tasks trained so far (rows: trained task, columns: evaluated task).

    Rows of tasks not trained yet are absent; an unfinished run gives fewer rows.
    """
    fin = final_epoch_rows(rows)
    if fin.empty:
        return np.zeros((0, 0))
    table = fin.pivot_table(index="trained_task", columns="eval_task", values="accuracy", aggfunc="mean")
    table = table.sort_index().sort_index(axis=1)
    return table.to_numpy(dtype=float)


def untrained_accuracy(rows: pd.DataFrame) -> np.ndarray:
    """b_k: accuracy of the untrained model on every task (the ``init`` rows)."""
    init = rows[rows["phase"] == "init"].sort_values("eval_task")
    return init["accuracy"].to_numpy(dtype=float)


def average_accuracy(A: np.ndarray) -> np.ndarray:
    """Mean over k <= t of A[t][k], for every trained task t."""
    return np.array([A[t, : t + 1].mean() for t in range(A.shape[0])])


def _check(A: np.ndarray) -> int:
    A = np.asarray(A, dtype=float)
    if A.ndim != 2 or A.shape[0] > A.shape[1]:
        raise ValueError(f"accuracy matrix must be T x K with T <= K, got shape {A.shape}")
    return A.shape[0]


def forgetting_per_task_max(A: np.ndarray) -> np.ndarray:
    """Chaudhry et al. 2018: max over l in [k, T-1) of A[l][k] minus A[T-1][k], for k < T-1."""
    T = _check(A)
    return np.array([A[k : T - 1, k].max() - A[T - 1, k] for k in range(T - 1)])


def forgetting_per_task_first(A: np.ndarray) -> np.ndarray:
    """Avalanche's definition: A[k][k] - A[T-1][k], for k < T-1."""
    T = _check(A)
    return np.array([A[k, k] - A[T - 1, k] for k in range(T - 1)])


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def average_forgetting_max(A: np.ndarray) -> float:
    """Mean max-based forgetting (Chaudhry et al. 2018) over the old tasks; NaN with one task."""
    return _mean(forgetting_per_task_max(A))


def average_forgetting_first(A: np.ndarray) -> float:
    """Mean first-based forgetting (Avalanche) over the old tasks; NaN with one task."""
    return _mean(forgetting_per_task_first(A))


def backward_transfer(A: np.ndarray) -> float:
    """Lopez-Paz & Ranzato 2017: mean over k < T-1 of A[T-1][k] - A[k][k]."""
    T = _check(A)
    return _mean(np.array([A[T - 1, k] - A[k, k] for k in range(T - 1)]))


def forward_transfer(A: np.ndarray, b: np.ndarray) -> float:
    """Mean over 1 <= k < T of A[k-1][k] - b_k (needs the evaluation of unseen tasks)."""
    T = _check(A)
    b = np.asarray(b, dtype=float)
    return _mean(np.array([A[k - 1, k] - b[k] for k in range(1, T)]))


def run_summary(rows: pd.DataFrame) -> dict[str, float]:
    """The headline numbers of one run."""
    A = accuracy_matrix(rows)
    T = A.shape[0]
    if T == 0:
        return {"tasks_trained": 0}
    b = untrained_accuracy(rows)
    return {
        "tasks_trained": T,
        "average_accuracy": float(average_accuracy(A)[-1]),
        "forgetting_max": average_forgetting_max(A),
        "forgetting_first": average_forgetting_first(A),
        "bwt": backward_transfer(A),
        "fwt": forward_transfer(A, b) if len(b) == A.shape[1] else float("nan"),
        "new_task_accuracy": float(A[T - 1, T - 1]),
        "old_task_accuracy": float(A[T - 1, : T - 1].mean()) if T > 1 else float("nan"),
    }
