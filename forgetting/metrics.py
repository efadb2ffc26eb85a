"""Pure functions from tidy metric rows to the numbers papers report.

A[t][k] is the accuracy on task k's test set after training on task t (t = 0: the base task),
read at the last epoch of task t. With T tasks trained:

- average accuracy after task t: mean over k <= t of A[t][k]
- forgetting, max-based (Chaudhry et al. 2018): for k < T-1, max over l in [k, T-1) of A[l][k]
  minus A[T-1][k]; averaged over k < T-1
- forgetting, first-based (Avalanche's definition): A[k][k] - A[T-1][k], averaged over k < T-1
- backward transfer (Lopez-Paz & Ranzato 2017): mean over k < T-1 of A[T-1][k] - A[k][k]
  (= minus the first-based forgetting)
- forward transfer (Lopez-Paz & Ranzato 2017): mean over 1 <= k < T of A[k-1][k] - b_k, b_k the
  untrained model's accuracy (the ``init`` rows)
- KL drift: ``kl_base`` = mean KL(p_base || p_current) per evaluated task, p_base the model at the
  end of task 0; "new task" is the task being trained at that evaluation point

Causal-LM runs also have the NLL matrix N[t][k] (mean held-out NLL per token, ``value="nll"``):
forgetting is the rise of an old task's NLL (``nll_forgetting_max``, ``nll_rise``).

The continual-learning benchmarks for LLMs (TRACE, Wang et al. 2023; LLMCL) report two numbers of
the same matrix R (their R[t][i] is our A[t][i]): OP, overall performance, the mean of the last
row over the tasks learned, (1/T) sum over i of R[T-1][i] (``overall_performance``), and BWT,
(1/(T-1)) sum over i < T-1 of R[T-1][i] - R[i][i] (``trace_bwt``, Lopez-Paz and Ranzato's
backward transfer, the same number as ``backward_transfer``).

Every function takes the rows of one run. Forgetting and BWT are positive/negative when
accuracy dropped, in accuracy units (fractions, not percent).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

EVAL_PHASES = ("step", "epoch")


def _one_run(rows: pd.DataFrame) -> pd.DataFrame:
    if "run_id" in rows and rows["run_id"].nunique() > 1:
        raise ValueError(f"rows of {rows['run_id'].nunique()} runs given; these metrics take the rows of one run")
    return rows


def final_epoch_rows(rows: pd.DataFrame, tasks_completed: int | None = None) -> pd.DataFrame:
    """The rows evaluated at the end of each trained task (its last epoch).

    ``tasks_completed`` (the manifest's ``completed_tasks``) drops a task whose training was cut
    short: its last recorded epoch is not "after training on task t".
    """
    ep = _one_run(rows)[rows["phase"] == "epoch"]
    if tasks_completed is not None:
        ep = ep[ep["trained_task"] < tasks_completed]
    last = ep.groupby("trained_task")["epoch"].transform("max")
    return ep[ep["epoch"] == last]


def accuracy_matrix(rows: pd.DataFrame, tasks_completed: int | None = None, value: str = "accuracy") -> np.ndarray:
    """A[t][k] for the tasks trained so far (rows: trained task, columns: evaluated task).

    Rows of tasks not trained yet are absent; an unfinished run gives fewer rows. ``value`` picks
    another measure of the rows (``nll``: the NLL matrix of a causal-LM run; ``majority_accuracy``,
    ``chance_accuracy``: the reference accuracies laid out the same way).
    """
    fin = final_epoch_rows(rows, tasks_completed)
    if fin.empty or value not in fin:
        return np.zeros((0, 0))
    table = fin.pivot_table(index="trained_task", columns="eval_task", values=value, aggfunc="mean")
    table = table.sort_index().sort_index(axis=1)
    return table.to_numpy(dtype=float)


def at_majority_rate(rows: pd.DataFrame, tasks_completed: int | None = None) -> list[tuple[int, int, float]]:
    """(t, k, rate) for every cell A[t][k], k <= t, whose accuracy equals task k's majority-class rate.

    Equal means the same count of correct examples (within half an example): the model most
    likely predicts one class for the whole task. Runs without the ``majority_accuracy`` column give [].
    """
    fin = final_epoch_rows(rows, tasks_completed)
    if fin.empty or "majority_accuracy" not in fin:
        return []
    fin = fin[(fin["eval_task"] <= fin["trained_task"]) & fin["majority_accuracy"].notna()]
    n = fin["n_eval"].clip(lower=1) if "n_eval" in fin else 1e9
    hit = fin[(fin["accuracy"] - fin["majority_accuracy"]).abs() < 0.5 / n]
    return [(int(r.trained_task), int(r.eval_task), float(r.majority_accuracy))
            for r in hit.sort_values(["trained_task", "eval_task"]).itertuples()]


def has_nll(rows: pd.DataFrame) -> bool:
    """Whether the rows carry a held-out NLL per token (the causal-LM objective's measure)."""
    return "nll" in rows and bool(rows["nll"].notna().any())


def nll_forgetting_max(N: np.ndarray) -> float:
    """Causal LMs: mean over old tasks k of N[T-1][k] minus the lowest N[l][k], l in [k, T-1): the rise in
    held-out NLL per token (nats) from its best, the NLL form of Chaudhry et al.'s forgetting."""
    T = _check(N)
    return _mean(np.array([N[T - 1, k] - N[k : T - 1, k].min() for k in range(T - 1)]))


def nll_rise(N: np.ndarray) -> float:
    """Causal LMs: mean over old tasks k of N[T-1][k] - N[k][k], the rise in NLL since task k was learned."""
    T = _check(N)
    return _mean(np.array([N[T - 1, k] - N[k, k] for k in range(T - 1)]))


def untrained_accuracy(rows: pd.DataFrame) -> np.ndarray:
    """b_k: accuracy of the untrained model on every task (the ``init`` rows)."""
    init = _one_run(rows)[rows["phase"] == "init"].sort_values("eval_task")
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


def overall_performance(A: np.ndarray) -> float:
    """TRACE's OP: mean over the T tasks learned of A[T-1][k], the scores after the last task (extra columns,
    such as tasks never trained or lm-eval's, are left out)."""
    T = _check(A)
    return _mean(np.asarray(A, dtype=float)[T - 1, :T]) if T else float("nan")


def trace_bwt(A: np.ndarray) -> float:
    """TRACE's BWT: mean over k < T-1 of A[T-1][k] - A[k][k] (Lopez-Paz & Ranzato's backward transfer)."""
    return backward_transfer(A)


def forward_transfer(A: np.ndarray, b: np.ndarray) -> float:
    """Mean over 1 <= k < T of A[k-1][k] - b_k (needs the evaluation of unseen tasks)."""
    T = _check(A)
    b = np.asarray(b, dtype=float)
    return _mean(np.array([A[k - 1, k] - b[k] for k in range(1, T)]))


# --- KL drift and curves: per evaluation point -------------------------------------------------
def evaluation_points(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows evaluated during training (phases step and epoch), one per (global step, task).

    At the end of an epoch a ``step`` row and an ``epoch`` row can share a global step (the same
    model); the later one is kept.
    """
    ev = _one_run(rows)[rows["phase"].isin(EVAL_PHASES)]
    return ev.drop_duplicates(["global_step", "eval_task"], keep="last").sort_values(["global_step", "eval_task"])


def kl_drift(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean KL(p_base || p_current) at every evaluation point of fine-tuning (trained task >= 1).

    Columns: global_step, trained_task, epoch, phase, kl_new (on the test inputs of the task
    being trained), kl_old (mean over the tasks before it, each task weighted equally).
    """
    ev = evaluation_points(rows)
    ev = ev[ev["trained_task"] >= 1]
    keys = ["global_step", "trained_task", "epoch", "phase"]
    new = ev[ev["eval_task"] == ev["trained_task"]].set_index(keys)["kl_base"].rename("kl_new")
    old = ev[ev["eval_task"] < ev["trained_task"]].groupby(keys)["kl_base"].mean().rename("kl_old")
    return pd.concat([new, old], axis=1).reset_index().sort_values("global_step", ignore_index=True)


def final_kl(rows: pd.DataFrame, tasks_completed: int | None = None) -> tuple[float, float]:
    """(KL on the last trained task's test inputs, mean KL on the earlier tasks') at the end.

    The first is the predictor of forgetting of Shenfeld et al. 2025: the forward KL from the base
    model, measured on the new task. NaN when only the base task was trained.
    """
    fin = final_epoch_rows(rows, tasks_completed)
    if fin.empty or fin["trained_task"].max() < 1:
        return float("nan"), float("nan")
    last = fin[fin["trained_task"] == fin["trained_task"].max()]
    t = int(last["trained_task"].iloc[0])
    new = last.loc[last["eval_task"] == t, "kl_base"]
    old = last.loc[last["eval_task"] < t, "kl_base"]
    return (float(new.iloc[0]) if len(new) else float("nan")), _mean(old.to_numpy(dtype=float))


def task_boundaries(rows: pd.DataFrame, tasks_completed: int | None = None) -> pd.Series:
    """Global step at the end of each completed task, indexed by task."""
    fin = final_epoch_rows(rows, tasks_completed)
    return fin.groupby("trained_task")["global_step"].first().sort_index()


def measured_only(rows: pd.DataFrame) -> pd.Series:
    """The rows of tasks that are measured but never learned (lm-eval's tasks, evaluation-only tasks): their
    eval_task numbers follow the stream's learned tasks."""
    flag = pd.Series(False, index=rows.index)
    if "lm_eval_metric" in rows:
        flag |= rows["lm_eval_metric"].notna()
    if "eval_only" in rows:
        flag |= rows["eval_only"].fillna(0).astype(bool)
    return flag


def old_task_curves(rows: pd.DataFrame, tasks_completed: int | None = None) -> pd.DataFrame:
    """Accuracy of each task from the end of its own training on (its forgetting curve).

    Columns of the evaluation points plus ``finetune_step`` (global step minus the steps of the
    base task). A task appears once a later task has been evaluated after it; a task measured but never learned (lm-eval's,
    evaluation-only) from the end of the base task on.
    """
    bounds = task_boundaries(rows, tasks_completed)
    if bounds.empty:
        return evaluation_points(rows).iloc[0:0].assign(finetune_step=[])
    ev = evaluation_points(rows)
    measured = measured_only(ev)
    start = ev["eval_task"].map(bounds).where(~measured, bounds.iloc[0])  # never learned: from the base task on
    out = ev[start.notna() & (ev["global_step"] >= start)].copy()
    out = out[(out.groupby("eval_task")["trained_task"].transform("max") > out["eval_task"]) | measured_only(out)]
    out["finetune_step"] = out["global_step"] - int(bounds.iloc[0])
    return out.reset_index(drop=True)


def run_summary(rows: pd.DataFrame, tasks_completed: int | None = None) -> dict[str, float]:
    """The headline numbers of one run (over the completed tasks when ``tasks_completed`` is given)."""
    A = accuracy_matrix(rows, tasks_completed)
    T = A.shape[0]
    if T == 0:
        return {"tasks_trained": 0}
    b = untrained_accuracy(rows)
    kl_new, kl_old = final_kl(rows, tasks_completed)
    lm = {}
    if has_nll(rows):
        N = accuracy_matrix(rows, tasks_completed, value="nll")
        fin = final_epoch_rows(rows, tasks_completed)
        last = fin[(fin["trained_task"] == T - 1) & (fin["eval_task"] <= T - 1)]
        answers = last["answer_accuracy"].dropna() if "answer_accuracy" in last else []
        lm = {"nll_forgetting_max": nll_forgetting_max(N), "nll_rise": nll_rise(N),
              # the mean answer accuracy over the tasks seen whose answers are scored (completion tasks)
              "answer_accuracy": float(np.mean(answers)) if len(answers) else float("nan"),
              "new_task_nll": float(N[T - 1, T - 1]),
              "old_task_nll": float(N[T - 1, : T - 1].mean()) if T > 1 else float("nan")}
    return {
        **lm,
        "tasks_trained": T,
        "average_accuracy": float(average_accuracy(A)[-1]),
        "forgetting_max": average_forgetting_max(A),
        "forgetting_first": average_forgetting_first(A),
        "bwt": backward_transfer(A),
        "op": overall_performance(A),
        "fwt": forward_transfer(A, b) if len(b) == A.shape[1] else float("nan"),
        "new_task_accuracy": float(A[T - 1, T - 1]),
        "old_task_accuracy": float(A[T - 1, : T - 1].mean()) if T > 1 else float("nan"),
        "kl_new_task": kl_new,
        "kl_old_tasks": kl_old,
        "weight_change": final_weight_change(rows, tasks_completed),
    }


def final_weight_change(rows: pd.DataFrame, tasks_completed: int | None = None) -> float:
    """‖θ − θ_base‖₂ at the end of the last trained task (NaN before a fine-tuning task, or rows without it)."""
    fin = final_epoch_rows(rows, tasks_completed)
    if fin.empty or "weight_change" not in fin or fin["trained_task"].max() < 1:
        return float("nan")
    last = fin.loc[fin["trained_task"] == fin["trained_task"].max(), "weight_change"].dropna()
    return float(last.iloc[0]) if len(last) else float("nan")


# --- across runs ------------------------------------------------------------------------------
def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n) with the t-distribution interval mean +- t_{(1+level)/2, n-1} s / sqrt(n).

    NaN values are left out; with fewer than two values the interval is NaN.
    """
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    m = float(x.mean())
    if n < 2:
        return m, float("nan"), float("nan"), 1
    from scipy import stats  # here, not at the top: it is slow to import and only this needs it

    half = float(stats.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return m, m - half, m + half, n


def bounded_ci(values: Sequence[float], low: float = -math.inf, high: float = math.inf,
               level: float = 0.95) -> tuple[float, float, float, int, bool]:
    """``mean_ci`` cut to the range the quantity can take: (mean, low, high, n, cut).

    The t-interval is symmetric and, with few seeds, can reach past a bound (an accuracy above
    100 %); the part outside is cut off and ``cut`` says so, so the reader knows the interval
    is not the symmetric one (its nominal coverage no longer holds exactly).
    """
    m, lo, hi, n = mean_ci(values, level)
    if math.isnan(lo):
        return m, lo, hi, n, False
    cut = lo < low or hi > high
    return m, max(lo, low), min(hi, high), n, cut


def pareto_front(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """Indices of the points no other point beats in both x and y (both maximised), by x ascending."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = []
    for i in range(len(x)):
        dominated = np.any((x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i])))
        if not dominated and not (np.isnan(x[i]) or np.isnan(y[i])):
            keep.append(i)
    return np.array(sorted(keep, key=lambda i: (x[i], -y[i])), dtype=int)
