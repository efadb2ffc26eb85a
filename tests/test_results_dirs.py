"""The default results folder: per budget for a run or a grid, per suite for a sweep (forgetting/budget.py).

Runs of different budgets must not share a folder by accident; an explicit --results-dir is used as
given, and where a run is written never changes its id."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from forgetting import registry, sweep
from forgetting.budget import budget, grid_results_dir, suite_results_dir
from forgetting.config import Component, RunConfig
from forgetting.results import MANIFEST
from forgetting.run import build_parser, config_from_args


def test_a_run_without_a_results_dir_goes_to_its_budget_and_keeps_its_id():
    default = registry.make_config(method="kl", epochs=2)
    assert default.results_dir == "results/epochs=2,batch_size=32"
    given = registry.make_config(method="kl", epochs=2, results_dir="mine")
    assert given.results_dir == "mine" and given.run_id == default.run_id  # the folder is never in the id
    assert registry.make_config(method="kl", epochs=2, kl_lambda=3.0).results_dir == default.results_dir
    assert registry.make_config(method="kl", epochs=2, batch_size=64).results_dir == "results/epochs=2,batch_size=64"
    assert registry.make_config(method="kl", epochs=2, eval_subset=50).results_dir == \
        "results/epochs=2,batch_size=32,eval_subset=50"
    # a data size is named where it is set away from its default (0: all), in BUDGET_KEYS order
    text = RunConfig(stream=Component("uci-sentiment", {"scenario": "domain", "text_test_per_task": 8,
                                                        "text_train_per_task": 16, "max_seq_len": 64}),
                     loop={"epochs": 1, "batch_size": 8})
    assert budget(text) == {"epochs": 1, "batch_size": 8, "text_train_per_task": 16, "text_test_per_task": 8}


def test_the_cli_defaults_to_the_budget_folder_and_keeps_an_explicit_one(tmp_path):
    ns = build_parser().parse_args(["--epochs", "1", "--batch-size", "16"])
    assert config_from_args(ns).results_dir == "results/epochs=1,batch_size=16"
    ns = build_parser().parse_args(["--epochs", "1", "--results-dir", str(tmp_path)])
    assert config_from_args(ns).results_dir == str(tmp_path)
    file = tmp_path / "run.toml"
    file.write_text(f"epochs = 1\nresults_dir = '{tmp_path / 'from-file'}'\n")
    assert config_from_args(build_parser().parse_args(["--config", str(file)])).results_dir == str(tmp_path / "from-file")


def test_the_notebook_api_defaults_to_the_budget_folder(monkeypatch):
    import forgetting
    import forgetting.running

    seen = []

    def fake_run(config, **kwargs):  # only where the run would go is checked here
        seen.append(config)
        return config.results_dir + "/" + config.run_id, pd.DataFrame({"x": [1]}), "complete"

    monkeypatch.setattr(forgetting.running, "run_experiment", fake_run)
    rows = forgetting.run(method="kl", kl_lambda=0.5, epochs=3)
    assert seen[-1].results_dir == "results/epochs=3,batch_size=32" == rows.attrs["results_dir"]
    rows = forgetting.run(method="kl", kl_lambda=0.5, epochs=3, results_dir="elsewhere")
    assert seen[-1].results_dir == "elsewhere" == rows.attrs["results_dir"] and seen[-1].run_id == seen[0].run_id


def test_folder_names():
    assert suite_results_dir(["quick"]) == "results/quick"
    assert suite_results_dir(["a", "b c/d", "a", ".."]) == "results/a+b_c_d+suite"
    two = [registry.make_config(method="kl", epochs=e) for e in (1, 2, 1)]
    assert grid_results_dir(two) == "results/epochs=1+2,batch_size=32"
    assert grid_results_dir(two[:1]) == "results/epochs=1,batch_size=32"
    subsets = [registry.make_config(method="kl", epochs=1, eval_subset=n) for n in (0, 50)]
    assert grid_results_dir(subsets) == "results/epochs=1,batch_size=32,eval_subset=0+50"  # not eval_subset=50


SUITE = """
name = "small study"
[[experiment]]
benchmark = "split-digits"
scenarios = ["domain"]
seeds = [0]
epochs = 1
[[experiment.method]]
name = "kl"
"""


def _mark_complete(folder, run_id):
    (folder / run_id).mkdir(parents=True)
    (folder / run_id / MANIFEST).write_text(json.dumps({"status": "complete"}))


def test_a_sweep_defaults_to_the_suite_folder_and_a_grid_to_its_budget(tmp_path, monkeypatch, capsys):
    """Where a sweep looks for its runs, seen through --list: a run marked complete in the expected folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(SUITE)
    run_id = registry.make_config(method="kl", epochs=1).run_id
    _mark_complete(tmp_path / "results" / "small_study", run_id)
    assert sweep.main(["s.toml", "--list"]) == 0
    out = capsys.readouterr()
    assert out.out.split()[:2] == ["complete", run_id] and "runs in results/small_study" in out.err
    assert sweep.main(["--grid", "kl_lambda=1", "--list", "--", "--epochs", "1"]) == 0
    out = capsys.readouterr()
    assert out.out.split()[0] == "new" and "runs in results/epochs=1,batch_size=32" in out.err
    _mark_complete(tmp_path / "results" / "epochs=1,batch_size=32", run_id)  # kl_lambda=1 is the default
    assert sweep.main(["--grid", "kl_lambda=1", "--list", "--", "--epochs", "1"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["complete", run_id]
    assert sweep.main(["s.toml", "--list", "--results-dir", "given"]) == 0  # explicit: as given
    out = capsys.readouterr()
    assert out.out.split()[0] == "new" and "runs in given" in out.err
