"""The report on a small real sweep (split-digits: kl and kl+rdrop x 2 lambdas x 2 seeds), and its bad inputs."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from forgetting.errors import BadInput
from forgetting.plot import main as plot_main
from forgetting.plot import write_report
from forgetting.report_runs import read_checked
from forgetting.report_summary import assign_experiments

T_975_1 = 12.706204736174707  # t_{0.975} with 1 degree of freedom (two seeds)
FIGURES = ["forgetting_curves", "accuracy_matrix", "tradeoff", "kl_vs_forgetting"]
# inches at 100 dpi, from the sizes documented in report_figures: 5 tasks (4 old), 4 experiments (2 x 2 panels)
SIZES = {"forgetting_curves": (11, 2.0 + 2.6 * 4), "accuracy_matrix": (0.8 + 4.6 * 2, 1.0 + 4.2 * 2),
         "tradeoff": (9, 6.5), "kl_vs_forgetting": (13, 5.5)}


def run(results: Path, *args: str) -> Path:
    from forgetting.run import build_parser, config_from_args, run_experiment

    argv = ["--epochs", "1", "--hidden", "32", "--results-dir", str(results), "--quiet", "--device", "cpu", *args]
    run_dir, _, _ = run_experiment(config_from_args(build_parser().parse_args(argv)))
    return run_dir


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """8 real runs of about a second each."""
    results = tmp_path_factory.mktemp("sweep")
    for method in ("kl", "kl+rdrop"):
        for lam in ("0.5", "5"):
            for seed in ("0", "1"):
                run(results, "--method", method, "--kl-lambda", lam, "--seed", seed)
    return results


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, write_report([sweep], out)


def test_every_file_is_written_and_every_image_decodes_at_its_size(report):
    out, files = report
    expected = {out / f"{f}.{ext}" for f in FIGURES for ext in ("png", "svg")} | \
        {out / "summary.csv", out / "summary.md", out / "runs.csv", out / "report.html"}
    assert set(files) == expected
    for name, (w, h) in SIZES.items():
        img = mpimg.imread(out / f"{name}.png")
        assert img.shape[:2] == (round(100 * h), round(100 * w)), name
        ink = (img[..., :3] < 0.9).any(axis=2).mean()
        assert 0.01 < ink < 0.9, f"{name}: {ink:.3f} of the pixels are not white"
        svg = ET.parse(out / f"{name}.svg").getroot()
        assert svg.tag.endswith("svg")
        assert float(svg.get("width").removesuffix("pt")) == pytest.approx(72 * w)
        assert float(svg.get("height").removesuffix("pt")) == pytest.approx(72 * h)
        assert len(list(svg.iter())) > 100, f"{name}.svg is nearly empty"


def hand_numbers(run_dir: Path) -> dict:
    """Average accuracy and max-based forgetting of a run, computed straight from its metrics.csv."""
    rows = pd.read_csv(run_dir / "metrics.csv")
    ep = rows[rows.phase == "epoch"]
    last = ep[ep.epoch == ep.epoch.max()]
    A = {(int(r.trained_task), int(r.eval_task)): r.accuracy for r in last.itertuples()}
    T = 1 + max(t for t, _ in A)
    forg = [max(A[l, k] for l in range(k, T - 1)) - A[T - 1, k] for k in range(T - 1)]
    return {"average_accuracy": sum(A[T - 1, k] for k in range(T)) / T, "forgetting_max": sum(forg) / len(forg)}


def test_summary_confidence_interval_is_the_hand_computed_t_interval(sweep, report):
    out, _ = report
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and set(summary["n_seeds"]) == {2} and set(summary["status"]) == {"complete"}
    runs = {}
    for d in sweep.iterdir():
        cfg = json.loads((d / "config.json").read_text())
        runs.setdefault((cfg["method"]["name"], cfg["method"]["options"]["kl_lambda"]), []).append(hand_numbers(d))
    bounds = {"average_accuracy": (0.0, 1.0), "forgetting_max": (-1.0, 1.0)}
    cuts = 0
    for (method, lam), seeds in runs.items():
        row = summary[(summary["method"] == method) & (summary["lambda"] == lam)].iloc[0]
        for m, (low, high) in bounds.items():
            x1, x2 = seeds[0][m], seeds[1][m]
            half = T_975_1 * abs(x1 - x2) / 2  # t * s / sqrt(2) with s = |x1 - x2| / sqrt(2)
            mean = (x1 + x2) / 2
            assert row[f"{m}_mean"] == pytest.approx(mean)
            # the t-interval, cut to what the quantity can take, and flagged when cut
            assert row[f"{m}_ci95_lo"] == pytest.approx(max(mean - half, low))
            assert row[f"{m}_ci95_hi"] == pytest.approx(min(mean + half, high))
            assert bool(row[f"{m}_ci95_cut"]) == (mean - half < low or mean + half > high)
            cuts += bool(row[f"{m}_ci95_cut"])
    for col in summary.columns:
        if col.endswith(("_ci95_lo", "_ci95_hi")) and "accuracy" in col:
            assert summary[col].dropna().between(0, 1).all(), col
    md = (out / "summary.md").read_text()
    assert "t distribution" in md and "max-based (Chaudhry" in md
    assert "| kl λ=5 + rdrop α=1 |" in md and "| kl, λ=0.5 |" in md  # every part keeps its strength
    assert f"{100 * summary.loc[0, 'average_accuracy_mean']:.1f} [" in md
    assert ("†" in md) == (cuts > 0) and "*reference: majority class*" in md and "*reference: chance*" in md


@pytest.mark.slow
def test_an_unfinished_run_is_plotted_as_far_as_it_got_and_named(sweep, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(sweep, results)
    fresh = results / "fresh"  # started, nothing evaluated yet
    shutil.copytree(sorted(sweep.iterdir())[0], fresh)
    set_json("manifest.json", status="running", completed_tasks=0, run_id="fresh", wall_time_s=None)(fresh)
    set_json("config.json", seed=42)(fresh)
    edit_csv(lambda r: r.iloc[:0])(fresh)
    d = run(results, "--method", "kl", "--kl-lambda", "0.5", "--seed", "2")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest.update(status="running", completed_tasks=2, wall_time_s=None)  # killed during task 2
    (d / "manifest.json").write_text(json.dumps(manifest))
    rows = pd.read_csv(d / "metrics.csv")
    rows[rows.trained_task <= 2].iloc[:-2].to_csv(d / "metrics.csv", index=False)
    other = run(tmp_path / "task", "--scenario", "task", "--method", "kl", "--kl-lambda", "1")
    files = write_report([results, other], tmp_path / "out")
    for sub in ("split-digits-domain", "split-digits-task"):
        assert all((tmp_path / "out" / sub / f"{f}.{e}") in files for f in FIGURES for e in ("png", "svg"))
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert (summary["status"] == "running").sum() == 2
    bad = summary[summary["seeds"] == "2"]
    assert len(bad) == 1 and bad.iloc[0]["state"] == "running after 2 of 5 tasks"
    pooled = summary[(summary["status"] == "complete") & (summary["method"] == "kl") & (summary["lambda"] == 0.5)
                     & (summary["scenario"] == "domain")]
    assert pooled.iloc[0]["n_seeds"] == 2  # not pooled with the complete seeds
    assert bad.iloc[0]["average_accuracy_mean"] == pytest.approx(
        np.mean(rows[(rows.phase == "epoch") & (rows.trained_task == 1)].tail(5).accuracy.iloc[:2]))
    assert "**unfinished**: running after 2 of 5 tasks" in (tmp_path / "out" / "summary.md").read_text()
    assert (summary["scenario"] == "task").sum() == 1
    assert summary.set_index("run_ids").loc["fresh", "state"] == "running, nothing recorded yet"


def test_a_task_stuck_at_its_majority_rate_is_warned_about(sweep, tmp_path):
    def stuck(rows):  # task 1 right after training it: exactly its majority-class rate
        at = (rows.trained_task == 1) & (rows.eval_task == 1)
        return rows.assign(accuracy=rows.accuracy.where(~at, rows.majority_accuracy))

    victim = corrupt(sweep, tmp_path, edit_csv(stuck))
    write_report([tmp_path / "results"], tmp_path / "out")
    md = (tmp_path / "out" / "summary.md").read_text()
    seed = read_checked(victim).seed
    assert "**Warning: accuracy equal to the majority-class rate**" in md
    assert f"seed {seed}: A[1][1] = " in md and md.count("A[1][1] = ") == 1


def test_names_read_as_a_reader_would():
    from forgetting.report_summary import display_name

    assert display_name("kl", {"kl_lambda": 0.0})[0] == "naive"
    assert display_name("kl", {"kl_lambda": 0.3})[0] == "kl, λ=0.3"
    assert display_name("replay", {"replay_size": 200})[0] == "replay"
    assert display_name("replay+kl", {"kl_lambda": 1.0})[0] == "replay + kl λ=1"
    assert display_name("replay+kl", {"kl_lambda": 0.0})[0] == "replay"
    assert display_name("kl+rdrop", {"kl_lambda": 1.0, "rdrop_alpha": 0.5})[0] == "kl λ=1 + rdrop α=0.5"
    assert display_name("kl+rdrop", {"kl_lambda": 0.0, "rdrop_alpha": 0.5})[0] == "rdrop, α=0.5"
    assert display_name("si", {"si_c": 1.0})[0] == "si, c=1"
    assert display_name("ewc", {"ewc_lambda": 1e5})[0] == "ewc, λ=1e5"
    assert display_name("joint", {})[0] == "joint" and display_name("naive", {})[0] == "naive"


def test_a_zero_strength_penalty_beside_a_real_naive_run_says_what_it_was(sweep):
    dirs = [d for d in sorted(sweep.iterdir()) if read_checked(d).method == "kl"]
    a = read_checked(dirs[0])
    a.config = {**a.config, "hparams": {**a.config["hparams"], "kl_lambda": 0.0}}
    b = read_checked(dirs[0])
    b.config = {**b.config, "method": "naive", "hparams": {}}
    b.manifest = {**b.manifest, "run_id": "naive-run"}
    b.rows = b.rows.assign(method="naive", **{"lambda": 0.0})
    labels = assign_experiments([a, b])
    assert labels["naive-run"] == "naive" and labels[a.run_id] == "naive (kl, λ=0)"
    assert assign_experiments([a])[a.run_id] == "naive"


def test_runs_that_differ_beyond_the_seed_are_not_pooled(sweep, tmp_path):
    dirs = sorted(sweep.iterdir())
    a = read_checked(dirs[0])
    b = read_checked(dirs[0])
    b.config = {**b.config, "seed": 9, "results_dir": "/elsewhere", "device": "cuda"}
    b.manifest = {**b.manifest, "run_id": "other"}
    c = read_checked(dirs[0])
    c.config = {**c.config, "lr": 0.01}
    c.manifest = {**c.manifest, "run_id": "third"}
    labels = assign_experiments([a, b, c])
    assert labels[a.run_id] == labels["other"] != labels["third"]
    assert "lr=0.01" in labels["third"] and "lr=0.001" in labels[a.run_id]


# --- bad inputs -----------------------------------------------------------------------------------
def corrupt(sweep: Path, tmp_path: Path, edit) -> Path:
    results = tmp_path / "results"
    shutil.copytree(sweep, results)
    victim = sorted(results.iterdir())[3]
    edit(victim)
    return victim


@pytest.mark.parametrize("case", ["no runs", "corrupt metrics", "schema version"])
def test_cli_bad_input_exits_2_with_one_line(case, sweep, tmp_path, capsys):
    if case == "no runs":
        target, named = tmp_path / "empty", tmp_path / "empty"
        target.mkdir()
    else:
        if case == "corrupt metrics":
            victim = corrupt(sweep, tmp_path, lambda d: (d / "metrics.csv").write_bytes(b"\x00\xff garbage\n\"\n"))
            named = victim / "metrics.csv"
        else:
            def bump(d):
                c = json.loads((d / "config.json").read_text())
                (d / "config.json").write_text(json.dumps({**c, "schema_version": 3}))
            victim = corrupt(sweep, tmp_path, bump)
            named = victim / "config.json"
        target = tmp_path / "results"
    code = plot_main([str(target), "--out", str(tmp_path / "out")])  # the CLI's main, in this process
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert str(named) in err
    assert not (tmp_path / "out").exists()


def set_json(name, **fields):
    def edit(d):
        obj = json.loads((d / name).read_text())
        (d / name).write_text(json.dumps({**obj, **fields}))
    return edit


def edit_csv(fn):
    def edit(d):
        rows = pd.read_csv(d / "metrics.csv")
        fn(rows).to_csv(d / "metrics.csv", index=False)
    return edit


BAD = {
    "empty metrics": (lambda d: (d / "metrics.csv").write_text(""), "metrics.csv: corrupt"),
    "missing column": (edit_csv(lambda r: r.drop(columns="accuracy")), "missing columns accuracy"),
    "text accuracy": (edit_csv(lambda r: r.assign(accuracy=r.accuracy.astype(str).where(r.index != 4, "n/a"))),
                      "column accuracy row 6 holds 'n/a'"),
    "accuracy out of range": (edit_csv(lambda r: r.assign(accuracy=r.accuracy * 100)), "outside [0, 1]"),
    "truncated complete run": (edit_csv(lambda r: r[r.trained_task < 3]), "says complete but the rows end after 3 of 5"),
    "bad manifest JSON": (lambda d: (d / "manifest.json").write_text("{\"status\": "), "manifest.json: corrupt JSON"),
    "manifest version": (set_json("manifest.json", schema_version=99), "unknown schema_version 99"),
    "no version": (set_json("config.json", schema_version=None), "unknown schema_version None"),
    "unknown status": (set_json("manifest.json", status="done"), "unknown status 'done'"),
    "missing config": (lambda d: (d / "config.json").unlink(), "config.json: missing"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_write_report_names_the_bad_file(case, sweep, tmp_path):
    edit, message = BAD[case]
    victim = corrupt(sweep, tmp_path, edit)
    with pytest.raises(BadInput, match=None) as e:
        write_report([tmp_path / "results"], tmp_path / "out")
    assert str(e.value).startswith(str(victim)) and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_path_and_file_as_out(sweep, tmp_path):
    with pytest.raises(BadInput, match="no such file or directory"):
        write_report([tmp_path / "nope"], tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInput, match="is a file, not a directory"):
        write_report([sweep], tmp_path / "file")
