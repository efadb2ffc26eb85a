"""Metrics on hand-built matrices and rows with known answers, and against Avalanche's own definitions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from forgetting import metrics as M

# A[t][k]: after training task t, accuracy on task k. Task 0 improves during task 1, then drops;
# task 1 gains later (positive backward transfer).
A2 = np.array([[0.6, 0.0, 0.1],
               [0.9, 0.7, 0.1],
               [0.5, 0.8, 0.9]])
B2 = np.array([0.1, 0.05, 0.2])


def test_average_accuracy_by_hand():
    assert M.average_accuracy(A2) == pytest.approx([0.6, 0.8, (0.5 + 0.8 + 0.9) / 3])


def test_forgetting_max_based_by_hand():
    # task 0: best of A[0][0]=0.6, A[1][0]=0.9 is 0.9, final 0.5 -> 0.4; task 1: 0.7 - 0.8 = -0.1 (a gain)
    assert M.forgetting_per_task_max(A2) == pytest.approx([0.4, -0.1])
    assert M.average_forgetting_max(A2) == pytest.approx(0.15)


def test_forgetting_first_based_by_hand():
    # task 0: 0.6 - 0.5 = 0.1; task 1: 0.7 - 0.8 = -0.1
    assert M.forgetting_per_task_first(A2) == pytest.approx([0.1, -0.1])
    assert M.average_forgetting_first(A2) == pytest.approx(0.0, abs=1e-12)


def test_backward_transfer_by_hand_and_sign():
    # (0.5 - 0.6 + 0.8 - 0.7) / 2 = 0
    assert M.backward_transfer(A2) == pytest.approx(0.0, abs=1e-12)
    drop = np.array([[0.9, 0.2], [0.3, 0.8]])
    assert M.backward_transfer(drop) == pytest.approx(-0.6)       # forgot: negative BWT
    assert M.average_forgetting_max(drop) == pytest.approx(0.6)   # ... positive forgetting
    assert M.average_forgetting_first(drop) == pytest.approx(0.6)


def test_forward_transfer_by_hand_and_sign():
    # k=1: A[0][1] - b1 = 0.0 - 0.05; k=2: A[1][2] - b2 = 0.1 - 0.2 -> mean -0.075
    assert M.forward_transfer(A2, B2) == pytest.approx(-0.075)
    assert M.forward_transfer(A2, [0.1, -0.05, 0.0]) == pytest.approx((0.05 + 0.1) / 2)


def test_one_task_and_unfinished_shapes():
    one = np.array([[0.9, 0.3, 0.2]])
    assert math.isnan(M.average_forgetting_max(one)) and math.isnan(M.backward_transfer(one))
    assert math.isnan(M.forward_transfer(one, [0.1, 0.1, 0.1]))
    partial = A2[:2]  # 2 of 3 tasks trained
    assert M.average_forgetting_max(partial) == pytest.approx(0.6 - 0.9)
    assert M.forward_transfer(partial, B2) == pytest.approx(-0.05)
    with pytest.raises(ValueError, match="T x K"):
        M.backward_transfer(np.ones((3, 2)))  # more trained tasks than tasks


@pytest.mark.parametrize("seed", range(5))
def test_invariants_on_random_matrices(seed):
    A = np.random.default_rng(seed).random((6, 6))
    f_max, f_first = M.forgetting_per_task_max(A), M.forgetting_per_task_first(A)
    assert np.all(f_max >= f_first - 1e-12)  # the max includes A[k][k]
    assert M.backward_transfer(A) == pytest.approx(-M.average_forgetting_first(A))


# --- rows -> numbers ------------------------------------------------------------------------------
def make_rows(A, b, epochs=2, steps_per_epoch=3, eval_every=0, kl=None, run_id="r1"):
    """Tidy rows of a run whose last epoch of task t evaluates to A[t]; earlier epochs hold decoys."""
    T, K = np.asarray(A).shape
    rows, step = [], 0
    base = dict(run_id=run_id, benchmark="b", scenario="domain", method="kl", **{"lambda": 1.0}, seed=0)
    for k in range(K):
        rows.append({**base, "phase": "init", "trained_task": -1, "epoch": 0, "global_step": 0, "eval_task": k,
                     "eval_task_name": f"b[{k}]", "accuracy": b[k], "kl_base": float("nan")})
    for t in range(T):
        for e in range(1, epochs + 1):
            for _ in range(steps_per_epoch):
                step += 1
                if eval_every and step % eval_every == 0:
                    for k in range(K):
                        rows.append({**base, "phase": "step", "trained_task": t, "epoch": e, "global_step": step,
                                     "eval_task": k, "eval_task_name": f"b[{k}]",
                                     "accuracy": A[t][k] if e == epochs and step % steps_per_epoch == 0 else 0.123,
                                     "kl_base": float("nan") if t == 0 else (kl[t][k] if kl is not None else 0.0)})
            for k in range(K):
                last = e == epochs
                rows.append({**base, "phase": "epoch", "trained_task": t, "epoch": e, "global_step": step,
                             "eval_task": k, "eval_task_name": f"b[{k}]", "accuracy": A[t][k] if last else 0.321,
                             "kl_base": float("nan") if t == 0 else (kl[t][k] if kl is not None and last else 9.0)})
    return pd.DataFrame(rows)


def test_accuracy_matrix_reads_the_last_epoch_of_each_task():
    rows = make_rows(A2, B2, epochs=3)
    assert np.array_equal(M.accuracy_matrix(rows), A2)
    assert np.array_equal(M.untrained_accuracy(rows), B2)
    s = M.run_summary(rows)
    assert s["average_accuracy"] == pytest.approx(2.2 / 3)
    assert s["forgetting_max"] == pytest.approx(0.15)
    assert s["fwt"] == pytest.approx(-0.075)
    assert s["new_task_accuracy"] == pytest.approx(0.9)
    assert s["old_task_accuracy"] == pytest.approx(0.65)


def test_a_task_cut_short_is_not_a_row_of_the_matrix():
    rows = make_rows(A2, B2, epochs=3)
    cut = rows.iloc[: len(rows) - 3 * 2]  # the last task lost its last two epochs: it did not finish
    assert M.accuracy_matrix(cut).shape == (3, 3)  # without the manifest it looks finished (epoch 1 of 3)
    assert np.array_equal(M.accuracy_matrix(cut, tasks_completed=2), A2[:2])
    assert M.run_summary(cut, tasks_completed=2)["tasks_trained"] == 2


def test_rows_of_several_runs_are_refused():
    rows = pd.concat([make_rows(A2, B2), make_rows(A2, B2, run_id="r2")])
    with pytest.raises(ValueError, match="2 runs"):
        M.accuracy_matrix(rows)


KL = [[0, 0, 0], [0.2, 0.4, 9], [0.1, 0.5, 0.6]]


def test_kl_drift_at_every_evaluation_point():
    rows = make_rows(A2, B2, epochs=2, steps_per_epoch=3, eval_every=3, kl=KL)
    d = M.kl_drift(rows)
    # fine-tuning tasks 1 and 2, evaluation points at steps 9, 12, 15, 18 (step and epoch rows merged)
    assert d["global_step"].tolist() == [9, 12, 15, 18]
    last = d.groupby("trained_task").tail(1).set_index("trained_task")
    assert last.loc[1, "kl_new"] == pytest.approx(0.4) and last.loc[1, "kl_old"] == pytest.approx(0.2)
    assert last.loc[2, "kl_new"] == pytest.approx(0.6) and last.loc[2, "kl_old"] == pytest.approx(0.3)
    assert M.final_kl(rows) == pytest.approx((0.6, 0.3))
    assert M.run_summary(rows)["kl_new_task"] == pytest.approx(0.6)


def test_old_task_curves_start_at_the_end_of_each_task():
    rows = make_rows(A2, B2, epochs=2, steps_per_epoch=3, eval_every=3)
    assert M.task_boundaries(rows).tolist() == [6, 12, 18]
    c = M.old_task_curves(rows)
    assert sorted(c["eval_task"].unique()) == [0, 1]  # the last task never becomes old
    t0 = c[c["eval_task"] == 0]
    assert t0["finetune_step"].tolist() == [0, 3, 6, 9, 12]
    # steps 9 and 15 end an epoch: the epoch row (0.321) wins over the step row of the same step
    assert t0["accuracy"].tolist() == [0.6, 0.321, 0.9, 0.321, 0.5]
    assert c[c["eval_task"] == 1]["finetune_step"].min() == 6


def test_mean_ci_against_the_t_table():
    m, lo, hi, n = M.mean_ci([0.70, 0.80])
    half = 12.706204736174707 * 0.05  # t_{0.975,1} * s / sqrt(2), s = 0.1 / sqrt(2)
    assert (m, n) == (pytest.approx(0.75), 2) and lo == pytest.approx(0.75 - half) and hi == pytest.approx(0.75 + half)
    m, lo, hi, n = M.mean_ci([1.0, 2.0, 4.0, float("nan")])
    half = 4.302652729749464 * math.sqrt(7 / 3) / math.sqrt(3)
    assert n == 3 and m == pytest.approx(7 / 3) and hi - m == pytest.approx(half)
    m, lo, hi, n = M.mean_ci([0.5])
    assert m == 0.5 and n == 1 and math.isnan(lo) and math.isnan(hi)


def test_bounded_ci_cuts_the_t_interval_to_the_range_and_says_so():
    values = [0.99, 1.0, 0.97]  # mean 0.98667, s = 0.015275, half = 4.3027 * s / sqrt(3) = 0.037946
    m, lo, hi, n, cut = M.bounded_ci(values, 0.0, 1.0)
    assert m == pytest.approx(0.986667, abs=1e-6) and lo == pytest.approx(0.986667 - 0.037946, abs=1e-6)
    assert hi == 1.0 and cut and n == 3
    assert M.bounded_ci([0.4, 0.5, 0.6], 0.0, 1.0)[4] is False
    assert M.bounded_ci([0.5], 0.0, 1.0)[4] is False  # no interval, nothing cut


def test_cells_at_the_majority_rate_are_found_to_half_an_example():
    rows = pd.DataFrame([
        # phase, trained, epoch, eval, accuracy, majority, n
        ("epoch", 0, 1, 0, 0.9, 0.5, 100), ("epoch", 0, 1, 1, 0.3, 0.3, 100),  # unseen task: not a warning
        ("epoch", 1, 1, 0, 0.504, 0.5, 100), ("epoch", 1, 1, 1, 0.3, 0.3, 100),
    ], columns=["phase", "trained_task", "epoch", "eval_task", "accuracy", "majority_accuracy", "n_eval"])
    assert M.at_majority_rate(rows) == [(1, 0, 0.5), (1, 1, 0.3)]  # 0.504 * 100 = 50.4 examples: within half
    rows.loc[2, "accuracy"] = 0.51
    assert M.at_majority_rate(rows) == [(1, 1, 0.3)]
    assert M.at_majority_rate(rows.drop(columns="majority_accuracy")) == []


def test_pareto_front_by_hand():
    x = [0.9, 0.8, 0.7, 0.6, 0.85]
    y = [0.1, 0.5, 0.4, 0.9, 0.45]
    # (0.7, 0.4) is beaten by (0.8, 0.5); (0.85, 0.45) is not beaten by anyone
    assert M.pareto_front(x, y).tolist() == [3, 1, 4, 0]
    assert M.pareto_front([0.5, 0.5], [0.5, 0.5]).tolist() == [0, 1]  # ties dominate nobody


# --- edge cases: one task, cut runs, missing and nullable columns, ties (metrics.py's mutation survivors) ----------
# N[t][k]: held-out NLL per token of a causal LM (lower is better). Task 0 is best during task 1, then rises;
# task 1 improves after it was learned.
N3 = np.array([[2.0, 5.0, 6.0],
               [1.5, 1.8, 5.5],
               [2.5, 1.6, 1.2]])
# answer accuracy of the completion tasks (task 1 is not one: NaN)
Q3 = np.array([[0.5, np.nan, 0.1],
               [0.3, np.nan, 0.2],
               [0.6, np.nan, 0.8]])


def test_nll_forgetting_and_rise_by_hand():
    # task 0: final 2.5 minus its lowest before, 1.5 -> 1.0; task 1: 1.6 - 1.8 = -0.2 (it improved)
    assert M.nll_forgetting_max(N3) == pytest.approx(0.4)
    # since learned: 2.5 - 2.0 = 0.5 and -0.2
    assert M.nll_rise(N3) == pytest.approx(0.15)
    assert math.isnan(M.nll_forgetting_max(N3[:1])) and math.isnan(M.nll_rise(N3[:1]))


def test_trace_overall_performance_and_bwt_by_hand():
    assert M.overall_performance(A2) == pytest.approx(2.2 / 3)
    assert M.overall_performance(A2[:2]) == pytest.approx(0.8)  # (0.9 + 0.7) / 2: column 2, never learned, is out
    assert math.isnan(M.overall_performance(np.zeros((0, 0))))  # the matrix of a run with no task finished
    assert M.trace_bwt(np.array([[0.9, 0.2], [0.3, 0.8]])) == pytest.approx(-0.6)


def test_float32_inputs_are_reduced_in_float64():
    f64 = [float(v) for v in np.array([0.1, 0.2, 0.7], dtype=np.float32)]  # the float32 values, exactly
    A32 = np.array([[0.5, 0.7, 0.0], [0.0, 0.5, 0.0], [0.1, 0.2, 0.7]], dtype=np.float32)
    assert M.overall_performance(A32) == sum(f64) / 3
    assert M.forward_transfer(A32[:2, :2], np.array([0.0, 0.1], dtype=np.float32)) == f64[2] - f64[0]
    m, lo, hi, n = M.mean_ci(np.array([0.1, 0.2, 0.7], dtype=np.float32))
    assert m == sum(f64) / 3 and n == 3
    assert hi - m == pytest.approx(4.302652729749464 * np.std(f64, ddof=1) / math.sqrt(3), rel=1e-12)


@pytest.mark.filterwarnings("error")
def test_a_run_of_one_task_gives_nan_for_every_old_task_number_without_a_warning():
    rows = make_rows(A2[:1], B2)
    rows["nll"] = N3[0][rows["eval_task"]]
    s = M.run_summary(rows)
    assert s["tasks_trained"] == 1 and s["average_accuracy"] == s["new_task_accuracy"] == s["op"] == 0.6
    assert s["new_task_nll"] == 2.0
    for key in ("forgetting_max", "forgetting_first", "bwt", "fwt", "old_task_accuracy", "kl_new_task", "kl_old_tasks",
                "weight_change", "nll_forgetting_max", "nll_rise", "old_task_nll", "answer_accuracy"):
        assert math.isnan(s[key]), key
    assert math.isnan(M.average_forgetting_max(A2[:1])) and math.isnan(M.average_forgetting_first(A2[:1]))


def test_a_run_with_no_task_finished():
    rows = make_rows(A2, B2, kl=KL)
    assert M.run_summary(rows, tasks_completed=0) == {"tasks_trained": 0}
    assert M.accuracy_matrix(rows, tasks_completed=0).shape == (0, 0)
    assert M.task_boundaries(rows, tasks_completed=0).empty
    assert all(math.isnan(v) for v in M.final_kl(rows, tasks_completed=0))


def lm_rows(epochs=3, **kw):
    """make_rows of A2 with the NLL N3, the answer accuracy Q3 and KL at the last epoch of each task (decoys
    before), and the weight change t + epoch / 10 from task 1 on."""
    rows = make_rows(A2, B2, epochs=epochs, kl=KL, **kw)
    last = (rows["phase"] == "epoch") & (rows["epoch"] == epochs)
    t, k = rows["trained_task"].to_numpy(), rows["eval_task"].to_numpy()
    rows["nll"] = np.where(last, N3[t, k], 7.0)
    rows["answer_accuracy"] = np.where(last, Q3[t, k], 0.9)
    rows["weight_change"] = np.where(t >= 1, t + rows["epoch"] / 10, np.nan)
    return rows


def test_run_summary_of_a_causal_lm_run_by_hand():
    s = M.run_summary(lm_rows())
    assert s["nll_forgetting_max"] == pytest.approx(0.4) and s["nll_rise"] == pytest.approx(0.15)
    assert s["new_task_nll"] == 1.2 and s["old_task_nll"] == pytest.approx((2.5 + 1.6) / 2)
    assert s["answer_accuracy"] == pytest.approx(0.7)  # after the last task, tasks 0 and 2 are scored: 0.6, 0.8
    # A2: first-based forgetting 0.6 - 0.5 and 0.7 - 0.8, BWT their opposite; OP the mean of the last row
    assert s["forgetting_first"] == pytest.approx(0.0, abs=1e-12) and s["bwt"] == pytest.approx(0.0, abs=1e-12)
    assert s["op"] == pytest.approx(2.2 / 3)
    assert (s["kl_new_task"], s["kl_old_tasks"]) == pytest.approx((0.6, 0.3))
    assert s["weight_change"] == pytest.approx(2.3)


def test_run_summary_of_a_cut_causal_lm_run_reads_only_the_completed_tasks():
    rows = lm_rows()
    cut = rows.iloc[: len(rows) - 3 * 2]  # task 2 stopped after its first epoch (decoys)
    s = M.run_summary(cut, tasks_completed=2)
    assert s["tasks_trained"] == 2
    assert s["nll_forgetting_max"] == pytest.approx(1.5 - 2.0) and s["nll_rise"] == pytest.approx(1.5 - 2.0)
    assert s["new_task_nll"] == 1.8 and s["old_task_nll"] == 1.5
    assert s["answer_accuracy"] == pytest.approx(0.3)  # tasks 0 and 1 only: task 2 (0.2) is not learned yet
    assert s["old_task_accuracy"] == pytest.approx(0.9) and s["new_task_accuracy"] == pytest.approx(0.7)
    assert (s["kl_new_task"], s["kl_old_tasks"]) == pytest.approx((0.4, 0.2))
    assert s["weight_change"] == pytest.approx(1.3)
    assert M.task_boundaries(cut, tasks_completed=2).tolist() == [9, 18]
    no_init = M.run_summary(rows[rows["phase"] != "init"])  # no untrained evaluation: no forward transfer
    assert math.isnan(no_init["fwt"]) and no_init["average_accuracy"] == pytest.approx(2.2 / 3)


def test_final_weight_change():
    rows = lm_rows()
    assert M.final_weight_change(rows) == pytest.approx(2.3)
    assert M.final_weight_change(rows, tasks_completed=2) == pytest.approx(1.3)
    assert math.isnan(M.final_weight_change(rows, tasks_completed=1))  # only the base task: no change yet
    assert math.isnan(M.final_weight_change(rows.drop(columns="weight_change")))
    end = (rows["phase"] == "epoch") & (rows["trained_task"] == 2)
    one = rows.copy()
    one.loc[end & (rows["eval_task"] != 1), "weight_change"] = np.nan  # recorded on one row of the last task
    assert M.final_weight_change(one) == pytest.approx(2.3)
    one.loc[end, "weight_change"] = np.nan
    assert math.isnan(M.final_weight_change(one))


def test_final_kl_when_the_last_task_misses_its_own_or_the_old_tasks_rows():
    rows = make_rows(A2, B2, kl=KL)
    end = (rows["phase"] == "epoch") & (rows["trained_task"] == 2) & (rows["epoch"] == 2)
    no_new = M.final_kl(rows[~(end & (rows["eval_task"] == 2))])
    assert math.isnan(no_new[0]) and no_new[1] == pytest.approx(0.3)
    only_new = M.final_kl(rows[~(end & (rows["eval_task"] < 2))])
    assert only_new[0] == pytest.approx(0.6) and math.isnan(only_new[1])


def test_accuracy_matrix_of_a_measure_the_rows_lack_and_of_nullable_or_int_columns():
    rows = make_rows(A2, B2)
    assert M.accuracy_matrix(rows, value="nll").shape == (0, 0)  # a classifier run has no NLL
    A = M.accuracy_matrix(rows.convert_dtypes())  # pandas' nullable dtypes (Float64, Int64)
    assert A.dtype == np.float64 and np.array_equal(A, A2)
    init = pd.DataFrame({"phase": ["init", "init"], "eval_task": [1, 0], "accuracy": [0, 1]})  # one example each
    b = M.untrained_accuracy(init)
    assert b.dtype == np.float64 and b.tolist() == [1.0, 0.0]


def test_has_nll():
    rows = make_rows(A2, B2)
    assert not M.has_nll(rows)
    rows["nll"] = np.nan
    assert not M.has_nll(rows)
    rows.loc[5, "nll"] = 1.5
    assert M.has_nll(rows)


def test_measured_only_flags_lm_eval_and_eval_only_rows():
    rows = pd.DataFrame({"lm_eval_metric": [None, "acc", None, None], "eval_only": [np.nan, np.nan, 1, 0]},
                        index=[10, 11, 12, 13])
    flags = lambda values: pd.Series(values, index=rows.index)  # noqa: E731
    pd.testing.assert_series_equal(M.measured_only(rows), flags([False, True, True, False]))
    pd.testing.assert_series_equal(M.measured_only(rows[["lm_eval_metric"]]), flags([False, True, False, False]))
    pd.testing.assert_series_equal(M.measured_only(rows[["eval_only"]]), flags([False, False, True, False]))
    pd.testing.assert_series_equal(M.measured_only(rows[[]]), flags([False] * 4))


def test_old_task_curves_of_a_task_measured_but_never_learned():
    A = [[0.6, 0.1, 0.3], [0.5, 0.7, 0.4]]  # tasks 0 and 1 learned; task 2 only measured
    rows = make_rows(A, B2, epochs=2, steps_per_epoch=3, eval_every=3)
    rows["eval_only"] = np.where(rows["eval_task"] == 2, 1, np.nan)
    c = M.old_task_curves(rows)
    assert list(c.columns) == list(M.evaluation_points(rows).columns) + ["finetune_step"]
    assert c.index.tolist() == list(range(len(c)))
    assert sorted(c["eval_task"].unique()) == [0, 2]
    t2 = c[c["eval_task"] == 2]  # from the end of the base task (step 6) on, as the old task 0
    assert t2["finetune_step"].tolist() == [0, 3, 6] and t2["accuracy"].tolist() == [0.3, 0.321, 0.4]


def test_old_task_curves_of_a_run_cut_in_its_base_task():
    rows = make_rows([[0.6, 0.3]], B2[:2], epochs=3, steps_per_epoch=3, eval_every=3)
    rows["eval_only"] = np.where(rows["eval_task"] == 1, 1, np.nan)
    cut = rows[rows["global_step"] <= 3]  # stopped in epoch 2 of 3 of the base task
    c = M.old_task_curves(cut, tasks_completed=0)
    assert c.empty and list(c.columns) == list(M.evaluation_points(cut).columns) + ["finetune_step"]
    assert pd.api.types.is_numeric_dtype(c["finetune_step"])
    # without the manifest, epoch 1 looks like the end of the base task: the measured task starts there
    c = M.old_task_curves(cut)
    assert c["eval_task"].tolist() == [1] and c["finetune_step"].tolist() == [0]


def test_kl_drift_numbers_its_rows_from_zero():
    base = dict(run_id="r", phase="step", epoch=1, trained_task=1)
    rows = pd.DataFrame([  # at step 4 only the old task is evaluated
        {**base, "global_step": 4, "eval_task": 0, "kl_base": 0.1},
        {**base, "global_step": 8, "eval_task": 0, "kl_base": 0.3},
        {**base, "global_step": 8, "eval_task": 1, "kl_base": 0.5},
    ])
    d = M.kl_drift(rows)
    assert d.index.tolist() == [0, 1] and d["global_step"].tolist() == [4, 8]
    assert d["kl_old"].tolist() == [0.1, 0.3] and math.isnan(d.loc[0, "kl_new"]) and d.loc[1, "kl_new"] == 0.5


def test_majority_rate_tolerance_is_half_an_example_of_the_n_evaluated():
    rows = pd.DataFrame([
        ("epoch", 0, 1, 0, 0.5, 0.5, 10),
        ("epoch", 1, 1, 0, 1.0, 0.6, 1),     # one example: 0.4 is within half of it
        ("epoch", 1, 1, 1, 1.0, 0.4, 0),     # n_eval 0 counts as 1: 0.6 is more than half an example
        ("epoch", 2, 1, 0, 0.75, 0.625, 4),  # exactly half an example: not within
        ("epoch", 2, 1, 1, 0.3, 0.3, 10),
    ], columns=["phase", "trained_task", "epoch", "eval_task", "accuracy", "majority_accuracy", "n_eval"])
    assert M.at_majority_rate(rows) == [(0, 0, 0.5), (1, 0, 0.6), (2, 1, 0.3)]
    assert M.at_majority_rate(rows, tasks_completed=2) == [(0, 0, 0.5), (1, 0, 0.6)]
    # without n_eval: within half an example of a billion
    assert M.at_majority_rate(rows.drop(columns="n_eval")) == [(0, 0, 0.5), (2, 1, 0.3)]
    tiny = rows.drop(columns="n_eval").iloc[1:3].assign(majority_accuracy=0.0, accuracy=[4.99999999975e-10, 5e-10])
    assert M.at_majority_rate(tiny) == [(1, 0, 0.0)]


def test_mean_ci_of_no_values_and_bounded_ci_at_the_bounds():
    for values in ([], [float("nan"), None]):
        m, lo, hi, n = M.mean_ci(values)
        assert n == 0 and math.isnan(m) and math.isnan(lo) and math.isnan(hi)
    assert M.bounded_ci([1.0, 1.0], 0.0, 1.0) == (1.0, 1.0, 1.0, 2, False)  # reaches the bound, not past it
    assert M.bounded_ci([0.0, 0.0], 0.0, 1.0) == (0.0, 0.0, 0.0, 2, False)
    m, lo, hi, n, cut = M.bounded_ci([0.7, 0.8], 0.0, 1.0, level=0.5)  # t_{0.75,1} = 1: half = s / sqrt(2) = 0.05
    assert (lo, hi) == pytest.approx((0.7, 0.8)) and not cut


def test_pareto_front_ties_missing_points_and_no_points():
    assert M.pareto_front([0.5, 0.5], [0.4, 0.6]).tolist() == [1]  # same x, higher y: beats it
    assert M.pareto_front([0.6, 0.7], [0.5, 0.5]).tolist() == [1]  # same y, higher x
    nan = float("nan")
    assert M.pareto_front([nan, 0.5, 0.9], [0.9, 0.5, nan]).tolist() == [1]  # a point missing either is on no front
    assert M.pareto_front([None, 0.5], [0.9, 0.5]).tolist() == [1]  # nor one missing as a JSON null reads
    assert M.pareto_front([0.9, 0.5], [None, 0.5]).tolist() == [1]
    for none in (M.pareto_front([], []), M.pareto_front([nan], [0.5])):
        assert none.dtype.kind == "i" and len(none) == 0  # an index array: x[front] works when it is empty


# --- against Avalanche -----------------------------------------------------------------------------
avalanche_fn = pytest.importorskip("avalanche.evaluation.functional")
from avalanche.evaluation.metrics.forgetting_bwt import Forgetting, StreamForgetting, forgetting_to_bwt  # noqa: E402
from avalanche.evaluation.metrics.forward_transfer import ForwardTransfer  # noqa: E402


class FedStreamForgetting(StreamForgetting):
    """Avalanche's StreamForgetting plugin, fed accuracies instead of a model's predictions."""

    value = float("nan")

    def metric_result(self, strategy):
        return self.value


def avalanche_stream_forgetting(A: np.ndarray) -> float:
    """Drive the plugin as Avalanche's loop does: train on exp t, then evaluate every experience."""
    metric = FedStreamForgetting()
    for t in range(A.shape[0]):
        metric.train_exp_id = t  # what before_training_exp sets
        metric.before_eval(None)
        for k in range(A.shape[1]):
            metric.eval_exp_id, metric.value = k, float(A[t, k])
            metric.after_eval_exp(None)
    return metric.result()


@pytest.mark.parametrize("seed", range(10))
def test_first_based_forgetting_is_avalanches(seed):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(2, 8))
    A = rng.random((T, T))
    F = avalanche_fn.forgetting(A)
    assert M.forgetting_per_task_first(A) == pytest.approx(F[T - 1, : T - 1])
    assert M.average_forgetting_first(A) == pytest.approx(avalanche_stream_forgetting(A))
    f = Forgetting()
    for k in range(T - 1):
        f.update(k, A[k, k], initial=True)
        f.update(k, A[T - 1, k])
    assert M.backward_transfer(A) == pytest.approx(np.mean(list(forgetting_to_bwt(f.result()).values())))


@pytest.mark.parametrize("seed", range(10))
def test_max_based_forgetting_equals_avalanches_only_when_no_task_improves_after_learning(seed):
    rng = np.random.default_rng(100 + seed)
    T = int(rng.integers(3, 8))
    A = rng.random((T, T))
    # make every column non-increasing below its diagonal: the best accuracy is right after learning
    mono = A.copy()
    for k in range(T):
        mono[k:, k] = np.sort(A[k:, k])[::-1]
    assert M.forgetting_per_task_max(mono) == pytest.approx(avalanche_fn.forgetting(mono)[T - 1, : T - 1])
    # now task 0 peaks during task 1, above its accuracy right after learning it: the definitions part
    bump = mono.copy()
    bump[1, 0] = bump[0, 0] + 0.25
    diff = M.forgetting_per_task_max(bump) - avalanche_fn.forgetting(bump)[T - 1, : T - 1]
    assert diff[0] == pytest.approx(0.25) and np.allclose(diff[1:], 0)
    assert M.average_forgetting_max(bump) == pytest.approx(avalanche_stream_forgetting(bump) + 0.25 / (T - 1))


@pytest.mark.parametrize("seed", range(5))
def test_forward_transfer_is_avalanches(seed):
    rng = np.random.default_rng(200 + seed)
    T = int(rng.integers(2, 8))
    A, b = rng.random((T, T)), rng.random(T)
    fwt = ForwardTransfer()
    for k in range(T):
        fwt.update(k, b[k], initial=True)
    for k in range(1, T):
        fwt.update(k, A[k - 1, k])
    assert M.forward_transfer(A, b) == pytest.approx(np.mean(list(fwt.result().values())))
