"""benchmarks/split_cifar.py end to end on tiny CIFAR-10 files in the real format (the numbers mean nothing)."""

from __future__ import annotations

import importlib.util

from cifar_files import write_cifar10

from forgetting.config import RunConfig


def load_script():
    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("split_cifar", ROOT / "benchmarks" / "split_cifar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_study_runs_and_writes_the_table(tmp_path, capsys):
    write_cifar10(tmp_path / "data")
    script = load_script()
    args = ["--tiny", "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "r"), "--seeds", "0",
            "--epochs", "1", "--device", "cpu", "--output", str(tmp_path / "out.md"), "--trust-data"]
    configs = script.configs(script.parse_args(args))
    assert len(configs) == len(script.ROWS) * 2
    label, first = configs[0]
    assert isinstance(first, RunConfig) and first.benchmark == "split-cifar10" and first.model_name == "resnet18"
    assert first.stream.options["augment"] and first.stream.options["train_per_class"] == 50
    assert first.loop["optimizer"] == "sgd" and first.loop["eval_subset"] == 200

    assert script.main([*args, "--rows", "naive", "der (200)"]) == 0
    out = capsys.readouterr().out
    assert "4 runs in" in out
    assert "| der (200) |" in out and "DER: 61.93 / 91.40" in out  # ours beside Mammoth's
    assert len(list((tmp_path / "r").iterdir())) == 4
    assert script.main([*args, "--rows", "naive", "der (200)"]) == 0  # a second call: every run is skipped
    assert capsys.readouterr().out.count("skipped") == 4


def test_recipe_presets_load_and_expand(tmp_path):
    from conftest import ROOT
    from forgetting.suite import load_suite

    mammoth = load_suite(ROOT / "benchmarks" / "split_cifar_mammoth.toml")
    runs = [r for e in mammoth.experiments for r in e.runs(str(tmp_path / "r"), str(tmp_path))]
    assert len(runs) == 7 * 2 * 3  # methods x class/task-IL x seeds
    assert {r.model.options["resnet_width"] for r in runs} == {64} and all(r.stream.options["augment"] for r in runs)
    assert {(r.loop["optimizer"], r.loop["batch_size"], r.loop["epochs"]) for r in runs} == {("sgd", 32, 50)}
    facil = load_suite(ROOT / "benchmarks" / "split_cifar100_facil.toml")
    runs = [r for e in facil.experiments for r in e.runs(str(tmp_path / "r"), str(tmp_path))]
    assert {(r.loop["momentum"], r.loop["weight_decay"], r.loop["lr_schedule"]) for r in runs} == {(0.9, 2e-4, "step")}
    assert {r.stream.options["n_tasks"] for r in runs} == {10}
