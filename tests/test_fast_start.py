"""A fast start: `--help` and a default run import only what they use; the import-free data paths
give exactly what scikit-learn gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from forgetting.streams.digits import load_digits_arrays
from forgetting.streams.splits import stratified_split

HEAVY = ("scipy", "pandas", "sklearn", "transformers", "datasets", "avalanche", "ray", "matplotlib", "seaborn")


def after(*args: str) -> dict:
    """``python -m forgetting.run ARGS`` in a fresh interpreter, then: the top-level packages in sys.modules
    (``modules``), how many objects the run left frozen (``frozen``), and how many objects the collector still
    tracks once the exit handlers have run (``tracked_at_exit``)."""
    code = ("import atexit, gc, json, runpy, sys\n"
            f"sys.argv = ['forgetting.run', *{list(args)!r}]\n"
            "try:\n    runpy.run_module('forgetting.run', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "modules, frozen = sorted({m.split('.')[0] for m in sys.modules}), gc.get_freeze_count()\n"
            "atexit._run_exitfuncs()\n"
            "print(json.dumps(dict(modules=modules, frozen=frozen, tracked_at_exit=len(gc.get_objects()))))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def modules_after(*args: str) -> set[str]:
    return set(after(*args)["modules"])


def test_help_imports_none_of_the_heavy_libraries():
    loaded = modules_after("--help")
    assert "torch" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_a_default_run_imports_no_scipy_sklearn_or_text_libraries_and_freezes_them(tmp_path):
    found = after("--epochs", "1", "--quiet", "--results-dir", str(tmp_path))
    assert list(tmp_path.glob("*/metrics.csv")), "the run wrote no results"
    unwanted = set(HEAVY) - {"pandas"}  # pandas writes metrics.csv and reads the final table
    assert not set(found["modules"]) & unwanted, sorted(set(found["modules"]) & unwanted)
    # the command's process froze its imports (torch alone leaves some 100,000 objects) and freezes all at exit
    # (forgetting/gc_freeze.py): what is left for the collector's shutdown passes is what the exit handlers made
    assert found["frozen"] > 100_000, found["frozen"]
    assert found["tracked_at_exit"] < 1_000, found["tracked_at_exit"]


def test_main_called_with_arguments_leaves_the_callers_collector_alone(tmp_path, capsys, monkeypatch):
    import gc

    from forgetting.cli import main

    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    before = gc.get_freeze_count()  # frozen objects can die (fewer), a freeze would add this process's 10^5-10^6
    assert main(["--kl-lambda", "-1", "--results-dir", str(tmp_path / "r")]) == 2
    assert "kl-lambda" in capsys.readouterr().err
    assert calls == [] and gc.get_freeze_count() <= before


def test_digits_read_without_scikit_learn_equal_load_digits():
    from sklearn.datasets import load_digits

    images, target = load_digits_arrays()
    digits = load_digits()
    assert np.array_equal(images, digits.images) and np.array_equal(target, digits.target)
    assert images.shape == (1797, 8, 8)


@pytest.mark.parametrize("case", range(6))
def test_stratified_split_is_scikit_learns_train_test_split(case):
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(case)
    if case == 0:
        images, y = load_digits_arrays()
        x, test_size, seed = images, 0.3, 0  # split-digits' own split
    else:
        n_classes = int(rng.integers(2, 11))
        y = np.repeat(np.arange(n_classes), rng.integers(2, 40, size=n_classes))  # uneven classes: ties to break
        y = rng.permutation(y)
        x = np.arange(len(y) * 3).reshape(len(y), 3)
        test_size, seed = float(rng.choice([0.2, 0.25, 0.3, 0.5])), int(rng.integers(0, 1000))
    ours = stratified_split(x, y, test_size, seed)
    theirs = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    for a, b in zip(ours, theirs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("case", range(8))
def test_text_splits_are_scikit_learns_train_test_split(case):
    # the text streams' split and sample (``streams.text._split``): train_test_split with an integer train_size,
    # stratified, and its plain shuffled split where stratifying is impossible (a class of one example, a part
    # smaller than the number of classes); string labels as the text streams have
    from sklearn.model_selection import train_test_split

    from forgetting.streams.text import _split

    rng = np.random.default_rng(100 + case)
    n_classes = int(rng.integers(2, 6))
    counts = rng.integers(1 if case >= 6 else 2, 30, size=n_classes)
    labels = [f"class {c}" for c in rng.permutation(np.repeat(np.arange(n_classes), counts))]
    texts = [f"text {i}" for i in range(len(labels))]
    size = {6: 1, 7: len(labels) - 1}.get(case, int(rng.integers(n_classes, len(labels) - n_classes + 1)))
    seed = int(rng.integers(0, 1000))
    try:
        theirs = train_test_split(texts, labels, train_size=size, random_state=seed, stratify=labels)
    except ValueError:
        theirs = train_test_split(texts, labels, train_size=size, random_state=seed)
    a, b, ya, yb = theirs
    assert _split(texts, labels, size, seed) == (a, ya, b, yb)


def test_metrics_csv_is_what_pandas_writes():
    import pandas as pd

    from forgetting.results import METRIC_COLUMNS, metrics_csv

    row = dict(zip(METRIC_COLUMNS, ["abc123", "split-digits", "domain", "kl+rdrop", 0.5, 3, "epoch", 2, 5, 1234, 4,
                                    "split-digits[8/9]", 0.987654321, 0.1, float("nan"), 108, 1e-20, 12.345678]))
    rows = [row, {**row, "phase": "init", "trained_task": -1, "kl_base": 0.0, "train_loss": float("nan"),
                  "eval_task_name": 'a "quoted", name', "accuracy": 1.0, "loss": 2.5e-7}]
    assert metrics_csv(rows) == pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(index=False)
    assert metrics_csv([]) == pd.DataFrame([], columns=METRIC_COLUMNS).to_csv(index=False)


def test_metrics_csv_rewritten_as_rows_come_is_the_text_of_all_its_rows(tmp_path):
    """The writer renders each row once and joins: after every rewrite, and after a resume, the file is
    ``metrics_csv`` of every row it holds."""
    from forgetting.registry import make_config
    from forgetting.results import METRIC_COLUMNS, METRICS, RunWriter, metrics_csv

    row = dict(zip(METRIC_COLUMNS, ["r1", "split-digits", "class", "kl", 1.0, 0, "epoch", 0, 1, 9, 0, 'a "b", c', 0.5]))
    writer = RunWriter(make_config(results_dir=str(tmp_path), progress=False), "cpu").open()
    rows = []
    for k in range(3):
        batch = [{**row, "eval_task": e, "accuracy": k / (e + 1), "loss": float("nan")} for e in range(k + 1)]
        rows += batch
        writer.add_rows(batch)
        writer.write_metrics(sync=False)
        assert (writer.dir / METRICS).read_text() == metrics_csv(rows)
    writer.resume_from(rows[:1], 0.0, 0)
    writer.add_rows(rows[3:])
    writer.flush_rows()
    assert (writer.dir / METRICS).read_text() == metrics_csv(rows[:1] + rows[3:])


def test_library_versions_read_from_the_header_are_importlib_metadatas():
    import importlib.metadata as md

    from forgetting.results import installed_version, library_versions

    for pkg in ("torch", "numpy", "pandas", "forgetting"):
        assert installed_version(pkg) == md.version(pkg)
    assert installed_version("no-such-package-here") is None
    assert library_versions()["torch"] == md.version("torch")
