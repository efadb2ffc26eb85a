"""--stop-at-accuracy A: a fine-tuning task ends at its first evaluation whose own test accuracy is >= A.

Checked on the rows against the same run without the stop: up to the stop the two runs are the same run, so the
stopped one must end exactly at the first evaluation of task 1 the whole run has at or above A."""

import json

import pandas as pd
import pytest

from forgetting.errors import BadInput
from forgetting.registry import make_config
from forgetting.results import read_run
from forgetting.run import main as run_main
from forgetting.run import run_experiment
from conftest import resumed_equals_whole

TINY = dict(method="naive", epochs=3, eval_every=2, seed=0, progress=False, model_options={"hidden": [16]})


def run(tmp_path, name, **kw):
    cfg = make_config(results_dir=str(tmp_path / name), **{**TINY, **kw})
    run_dir, rows, status = run_experiment(cfg, force=True)
    assert status == "complete"
    return cfg, rows.drop(columns="wall_time"), json.loads((run_dir / "manifest.json").read_text())


def own_rows(rows, t):
    """Task t's evaluations of itself while it trains, in order (the end of task t - 1 excluded)."""
    return rows[(rows.trained_task == t) & (rows.eval_task == t)].reset_index(drop=True)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The run without the stop (tasks 0-2), the reference the stopped runs are checked against."""
    return run(tmp_path_factory.mktemp("whole"), "whole", learn_tasks=3)


def test_stops_at_the_first_evaluation_at_or_above_the_target_and_not_before(whole, tmp_path):
    _, ref, _ = whole
    acc = own_rows(ref, 1).accuracy.to_numpy()
    # a target first reached at an evaluation inside the task: its accuracy, above every earlier one
    i = next(i for i in range(2, len(acc)) if acc[i] > acc[:i].max())
    target = float(acc[i])
    cfg, rows, manifest = run(tmp_path, "stop", learn_tasks=3, stop_at_accuracy=target)
    mine = own_rows(rows, 1)
    assert len(mine) == i + 1  # evaluated up to the crossing and no further
    assert (mine.accuracy.iloc[:i] < target).all() and mine.accuracy.iloc[i] >= target
    step_of_stop = int(own_rows(ref, 1).global_step.iloc[i])
    # everything before the stop is the unstopped run's, bitwise (the evaluations of every task)
    before = lambda r: r[(r.trained_task < 1) | ((r.trained_task == 1) & (r.global_step < step_of_stop))]
    pd.testing.assert_frame_equal(before(rows).drop(columns="run_id").reset_index(drop=True),
                                  before(ref).drop(columns="run_id").reset_index(drop=True), check_exact=True)
    # the stop's rows are the task's end: phase epoch at the epoch it fell in, one evaluation (no step row too)
    end = rows[(rows.trained_task == 1) & (rows.global_step == step_of_stop)]
    assert set(end.phase) == {"epoch"} and len(end) == len(ref[ref.global_step == 0])
    assert end.epoch.iloc[0] == own_rows(ref, 1).epoch.iloc[i]
    stop = manifest["stopped_at"]["1"]
    assert stop["reached"] and stop["global_step"] == step_of_stop and stop["accuracy"] == target
    assert stop["steps"] == step_of_stop - int(ref[(ref.trained_task == 0)].global_step.max())
    assert "0" not in manifest["stopped_at"]  # the base task is never cut
    assert cfg.run_id != whole[0].run_id and cfg.loop["stop_at_accuracy"] == target


def test_the_base_task_is_never_cut(whole, tmp_path):
    _, ref, _ = whole
    _, rows, manifest = run(tmp_path, "low", learn_tasks=3, stop_at_accuracy=1e-6)
    base = rows[rows.trained_task == 0]
    pd.testing.assert_frame_equal(base.drop(columns="run_id"), ref[ref.trained_task == 0].drop(columns="run_id"),
                                  check_exact=True)
    for t in (1, 2):  # each fine-tuning task ends at its first evaluation (every --eval-every steps)
        assert list(rows[(rows.trained_task == t)].phase.unique()) == ["epoch"]
        assert manifest["stopped_at"][str(t)]["steps"] == TINY["eval_every"]
    assert manifest["completed_tasks"] == 3


def test_no_stop_when_the_target_is_never_reached(whole, tmp_path):
    _, ref, _ = whole
    best = ref[(ref.trained_task >= 1) & (ref.eval_task == ref.trained_task)].accuracy.max()
    assert best < 1.0
    _, rows, manifest = run(tmp_path, "never", learn_tasks=3, stop_at_accuracy=1.0)
    pd.testing.assert_frame_equal(rows.drop(columns="run_id"), ref.drop(columns="run_id"), check_exact=True)
    for t in (1, 2):
        stop = manifest["stopped_at"][str(t)]
        last = own_rows(ref, t).iloc[-1]
        assert not stop["reached"] and stop["epoch"] == TINY["epochs"] and stop["accuracy"] == last.accuracy


def test_resumed_from_a_boundary_gives_the_same_rows_and_stops(whole, tmp_path, monkeypatch):
    _, ref, _ = whole
    target = float(own_rows(ref, 1).accuracy.iloc[3])
    cfg = make_config(results_dir=str(tmp_path / "cut"), learn_tasks=3, stop_at_accuracy=target, **TINY)
    run_dir = resumed_equals_whole(cfg, tmp_path, monkeypatch)
    resumed, whole_manifest = read_run(run_dir)[2], read_run(tmp_path / "whole" / cfg.run_id)[2]
    assert resumed["resumed_at"][0]["after_task"] == 1
    assert resumed["stopped_at"] == whole_manifest["stopped_at"] and set(resumed["stopped_at"]) == {"1", "2"}


def test_off_by_default_and_out_of_the_run_id():
    plain, off = make_config(**TINY), make_config(stop_at_accuracy=0, **TINY)
    assert off.run_id == plain.run_id and "stop_at_accuracy" not in off.loop and off.stop_at_accuracy == 0.0


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "high"])
def test_bad_values_one_line_exit_2(value, capsys, tmp_path):
    assert run_main(["--stop-at-accuracy", value, "--quiet", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--stop-at-accuracy" in err and value in err and "at most 1" in err
    assert not any(tmp_path.iterdir())
    with pytest.raises(BadInput, match="applies to our training loop only"):
        make_config(method="avalanche-naive", stop_at_accuracy=0.9, progress=False)


@pytest.mark.slow  # two parity-mnist runs and the script's import: about 2 s
def test_rl_razor_from_sweep_lists_each_run_where_it_ended(mnist_dir, tmp_path):
    """benchmarks/rl_razor.py --from-sweep on runs with the stop: each run's new-task accuracy is the one where it
    ended (the manifest's), reached or not, and the target it reports is the runs' lowest."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("rl_razor", ROOT / "benchmarks" / "rl_razor.py")
    rl_razor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rl_razor)
    values = dict(benchmark="parity-mnist", method="naive", epochs=1, eval_every=4, batch_size=512, hidden=[8],
                  dropout=0.0, old_train=100, base_parity=20, eval_subset=100, data_dir=str(mnist_dir),
                  results_dir=str(tmp_path / "r"), progress=False, device="cpu")
    stops = {}
    for target in (1e-6, 1.0):  # reached at the first evaluation; never
        run_dir, _, _ = run_experiment(make_config(stop_at_accuracy=target, **values))
        stops[run_dir.name] = json.loads((run_dir / "manifest.json").read_text())["stopped_at"]["1"]
    assert rl_razor.from_sweep(tmp_path / "r", tmp_path / "out") == 1e-6
    runs = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("run_id")
    for run_id, stop in stops.items():
        assert runs.loc[run_id, "new_acc"] == pytest.approx(stop["accuracy"], abs=1e-7)
        assert runs.loc[run_id, "stopped"] == int(stop["reached"])
        assert runs.loc[run_id, "steps"] == stop["steps"]
    assert sorted(runs.stopped) == [0, 1]


def test_rl_razor_suite_runs_the_toml_then_reads_it_back(tmp_path, monkeypatch):
    """``rl_razor.py --suite RESULTS``, the study in one command: the sweep of benchmarks/rl_razor.toml into RESULTS
    (its report beside), then ``--from-sweep RESULTS``; a failed sweep's exit code is returned and nothing is read."""
    import importlib.util

    from conftest import ROOT
    from forgetting import sweep

    spec = importlib.util.spec_from_file_location("rl_razor", ROOT / "benchmarks" / "rl_razor.py")
    rl_razor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rl_razor)
    calls = []
    monkeypatch.setattr(sweep, "main", lambda argv: calls.append(("sweep", argv)) or code)
    monkeypatch.setattr(rl_razor, "from_sweep", lambda results, out: calls.append(("read", results, out)) or 0.95)
    monkeypatch.setattr(rl_razor, "report", lambda out, target: calls.append(("report", out, target)))
    results = tmp_path / "suite"
    code = 0
    assert rl_razor.main(["--suite", str(results)]) == 0
    assert calls == [("sweep", [str(ROOT / "benchmarks" / "rl_razor.toml"), "--results-dir", str(results),
                                "--report-dir", str(results / "report")]),
                     ("read", results, results / "rl_razor_report"), ("report", results / "rl_razor_report", 0.95)]
    calls.clear()
    code = 3
    assert rl_razor.main(["--suite", str(results)]) == 3 and [c[0] for c in calls] == ["sweep"]
