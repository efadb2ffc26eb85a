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
from PIL import Image

from forgetting.errors import BadInput
from forgetting.plot import main as plot_main
from forgetting.plot import write_report
from forgetting.report_runs import read_checked
from forgetting.report_summary import assign_experiments

T_975_1 = 12.706204736174707  # t_{0.975} with 1 degree of freedom (two seeds)
FIGURES = ["forgetting_curves", "accuracy_matrix", "tradeoff", "kl_vs_forgetting"]
FORMATS = ("pdf", "svg", "png")
PAGE, COLUMN = 7.16, 3.5  # inches: the default width, and --width column


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


def test_every_figure_is_written_as_pdf_svg_and_a_300_dpi_png_a_page_wide(report):
    out, files = report
    expected = {out / f"{f}.{ext}" for f in FIGURES for ext in FORMATS} | \
        {out / "summary.csv", out / "summary.md", out / "runs.csv", out / "report.html"}
    assert set(files) == expected
    for name in FIGURES:
        with Image.open(out / f"{name}.png") as im:
            dpi = im.info["dpi"]
            w, h = im.size[0] / dpi[0], im.size[1] / dpi[1]
        assert dpi == pytest.approx((300, 300), abs=0.01), name
        assert w == pytest.approx(PAGE, abs=0.01) and 1.5 < h <= 9.5, (name, w, h)  # fits a page
        img = mpimg.imread(out / f"{name}.png")
        ink = (img[..., :3] < 0.9).any(axis=2).mean()
        assert 0.01 < ink < 0.9, f"{name}: {ink:.3f} of the pixels are not white"
        svg = ET.parse(out / f"{name}.svg").getroot()
        assert svg.tag.endswith("svg")
        assert float(svg.get("width").removesuffix("pt")) == pytest.approx(72 * w, abs=1)
        assert float(svg.get("height").removesuffix("pt")) == pytest.approx(72 * h, abs=1)
        assert len(list(svg.iter())) > 100, f"{name}.svg is nearly empty"
        assert b"<dc:date>" not in (out / f"{name}.svg").read_bytes()
        pdf = (out / f"{name}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-") and b"/CreationDate" not in pdf and b"/FontFile2" in pdf  # TrueType
        assert f"/MediaBox [ 0 0 {72 * PAGE:g} ".encode() in pdf


def test_the_same_figure_drawn_again_gives_the_same_bytes(sweep, report):
    """No dates or random ids inside: figures(df) saved as the report saves gives the report's files."""
    import matplotlib.pyplot as plt

    import forgetting
    from forgetting.report_figures import save

    out, _ = report
    figs = forgetting.plot.figures(forgetting.load_results(sweep))
    again = out.parent / f"{out.name}-again"
    again.mkdir()
    save(figs["kl_vs_forgetting"], again, "kl_vs_forgetting", formats=("pdf", "svg"))
    for ext in ("pdf", "svg"):
        assert (again / f"kl_vs_forgetting.{ext}").read_bytes() == (out / f"kl_vs_forgetting.{ext}").read_bytes()
    for fig in figs.values():
        plt.close(fig)


@pytest.fixture(scope="module")
def figs(sweep):
    """The default figures as matplotlib objects, drawn (so tick labels exist)."""
    import matplotlib.pyplot as plt

    import forgetting

    got = forgetting.plot.figures(forgetting.load_results(sweep))
    for fig in got.values():
        fig.draw_without_rendering()
    yield got
    for fig in got.values():
        plt.close(fig)


def accuracy_axes(fig):
    """(axes, 'x' or 'y') for every axis of ``fig`` that shows an accuracy."""
    return [(ax, xy) for ax in fig.axes for xy in "xy"
            if "accuracy" in (ax.get_xlabel() if xy == "x" else ax.get_ylabel())]


def test_one_scale_percent_and_axes_end_where_the_quantity_does(figs):
    from forgetting.report_figures import MARGIN

    found = 0
    for name, fig in figs.items():
        for ax, xy in accuracy_axes(fig):
            lo, hi = ax.get_xlim() if xy == "x" else ax.get_ylim()
            assert -MARGIN <= lo < hi <= 100 + MARGIN, (name, xy, lo, hi)
            found += 1
    assert found == 4 + 2 + 1  # a curve panel per old task, both axes of the trade-off, the colour bar
    curves = [ax for ax in figs["forgetting_curves"].axes if ax.get_ylabel() == "accuracy (%)"]
    assert len(curves) == 4
    for ax in curves:
        means = [line for line in ax.lines if line.get_label().startswith("kl")]
        assert len(means) == 4  # one per experiment
        y = np.concatenate([line.get_ydata() for line in means])
        assert y.min() >= 0 and y.max() <= 100 and y.max() > 50  # %, not a fraction
    heat = figs["accuracy_matrix"]
    assert heat.axes[-1].get_ylim() == (0, 100) and heat.axes[-1].get_ylabel() == "accuracy (%)"  # colour bar
    kl = figs["kl_vs_forgetting"]
    lo, hi = kl.axes[0].get_ylim()
    assert -100 - MARGIN <= lo < hi <= 100 + MARGIN  # forgetting in points
    for ax in kl.axes:
        lo, hi = ax.get_xlim()
        assert lo >= -0.05 * (hi - lo)  # KL >= 0, give or take a marker


def test_type_is_7_to_9_pt_and_inside_the_figure(figs):
    from matplotlib.text import Text

    for name, fig in figs.items():
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        assert len(texts) > 10, name
        for t in texts:
            assert 7 <= t.get_fontsize() <= 9, (name, t.get_text(), t.get_fontsize())
        drawn = fig.get_tightbbox()  # inches: everything drawn, ticks as shown
        w, h = fig.get_size_inches()
        assert drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= w + 0.01 and drawn.y1 <= h + 0.01, \
            (name, drawn.bounds, (w, h))


def test_methods_tasks_bands_and_width_restrict_what_is_drawn(sweep):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    import forgetting

    df = forgetting.load_results(sweep)
    chosen = ["kl λ=5 + rdrop α=1", "kl, λ=0.5"]
    figs = forgetting.plot.figures(df, methods=chosen, tasks="2,0", bands=False, width="column")
    try:
        for fig in figs.values():
            assert fig.get_size_inches()[0] == pytest.approx(COLUMN)
        curves = figs["forgetting_curves"]
        panels = [ax for ax in curves.axes if ax.get_ylabel() == "accuracy (%)"]
        assert [ax.get_title(loc="left") for ax in panels] == ["task 2: 4/5", "task 0: 0/1"]
        for ax in panels:
            assert [line.get_label() for line in ax.lines if line.get_label() in chosen + ["kl, λ=5"]] == chosen
            assert not [c for c in ax.collections if isinstance(c, PolyCollection)]  # no bands
        legend = [t.get_text() for t in curves.legends[0].get_texts()]
        assert legend[:2] == [f"{c} (2 seeds)" for c in chosen] and not any("λ=5 (" in t for t in legend)
        assert "band" not in curves.legends[0].get_title().get_text()
        heat = figs["accuracy_matrix"]
        titles = [ax.get_title(loc="left").replace("\n", " ") for ax in heat.axes if ax.get_title(loc="left")]
        assert len(titles) == 2 and all(t.startswith(c) for t, c in zip(titles, chosen)), titles
        trade = [t.get_text() for t in figs["tradeoff"].legends[0].get_texts()]
        assert trade[:2] == [f"{c} (2 seeds)" for c in chosen] and len(trade) == 3 + 2  # + Pareto, references
        assert sum(len(c.get_offsets()) for c in figs["kl_vs_forgetting"].axes[0].collections) == 4  # 2 x 2 seeds
    finally:
        for fig in figs.values():
            plt.close(fig)
    # a method names each of its strengths; bands are drawn by default
    figs = forgetting.plot.figures(df, methods="kl+rdrop", tasks=[1])
    try:
        (panel,) = [ax for ax in figs["forgetting_curves"].axes if ax.get_ylabel() == "accuracy (%)"]
        assert sorted(line.get_label() for line in panel.lines if "rdrop" in line.get_label()) == \
            ["kl λ=0.5 + rdrop α=1", "kl λ=5 + rdrop α=1"]
        # a band each, or (1-epoch seeds far apart: a band over all of 0-100 %) each seed's points
        assert sorted(c.get_label().split(": ")[1] for c in panel.collections
                      if c.get_label().startswith(("band: ", "seeds: "))) == ["kl λ=0.5 + rdrop α=1", "kl λ=5 + rdrop α=1"]
    finally:
        for fig in figs.values():
            plt.close(fig)


def test_cli_writes_the_formats_asked_for_at_column_width(sweep, tmp_path):
    out = tmp_path / "out"
    assert plot_main([str(sweep), "--out", str(out), "--quiet", "--width", "column", "--formats", "png",
                      "--methods", "kl, λ=0.5,kl λ=5 + rdrop α=1", "--no-bands", "--style", "paper"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{f}.png" for f in FIGURES] + [
        "summary.csv", "summary.md", "runs.csv", "report.html"])
    for name in FIGURES:
        with Image.open(out / f"{name}.png") as im:
            assert im.size[0] / im.info["dpi"][0] == pytest.approx(COLUMN, abs=0.01)
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(FIGURES)
    assert len(pd.read_csv(out / "summary.csv")) == 4  # the summary keeps every experiment


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
    files = write_report([results, other], tmp_path / "out", formats="png")  # every format: the report fixture's test
    for sub in ("split-digits-domain", "split-digits-task"):
        assert all((tmp_path / "out" / sub / f"{f}.png") in files for f in FIGURES)
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
    write_report([tmp_path / "results"], tmp_path / "out", formats="png")  # the summary is what is read
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


def test_an_option_added_later_at_its_default_does_not_split_seeds_of_one_experiment(sweep, tmp_path):
    import json
    import shutil

    # two seeds of one experiment; the second recorded after an option was added (kept, at its default, as a
    # setting: lm_eval_at), the first before it: one experiment, as its run ids say
    first, second = [d for d in sorted(sweep.iterdir()) if read_checked(d).method == "kl"
                     and read_checked(d).lam == 0.5][:2]
    later = shutil.copytree(second, tmp_path / second.name)
    config = json.loads((later / "config.json").read_text())
    config["model"]["settings"] = {**config["model"].get("settings", {}), "lm_eval_at": "boundaries"}
    (later / "config.json").write_text(json.dumps(config))
    a, b = read_checked(first), read_checked(later)
    assert a.seed != b.seed and "model_options.lm_eval_at" in b.settings
    labels = assign_experiments([a, b])
    assert labels[a.run_id] == labels[b.run_id] == "kl, λ=0.5"
    config["model"]["options"] = {**config["model"]["options"], "lm_eval_at": "evaluations"}  # not a default
    del config["model"]["settings"]["lm_eval_at"]
    (later / "config.json").write_text(json.dumps(config))
    assert assign_experiments([a, read_checked(later)])[b.run_id] != labels[a.run_id]


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


BAD_OPTIONS = {
    "unknown method": (["--methods", "kl,magic"], "'magic'", "allowed: kl, kl+rdrop, 'kl, λ=0.5'"),
    "task not old": (["--tasks", "0,4"], "'4'", "allowed: 0-3"),
    "task not a number": (["--tasks", "first"], "'first'", "allowed: 0-3"),
    "unknown format": (["--formats", "pdf,jpg"], "'jpg'", "allowed: pdf, svg, png"),
    "empty formats": (["--formats", ""], "--formats: empty", "at least one"),
    "unknown width": (["--width", "a4"], "'a4'", "column"),
    "unknown style": (["--style", "fancy"], "'fancy'", "paper"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_figure_option_exits_2_naming_it_and_writes_nothing(case, sweep, tmp_path, capsys):
    argv, value, allowed = BAD_OPTIONS[case]
    try:
        code = plot_main([str(sweep), "--out", str(tmp_path / "out"), *argv])
    except SystemExit as e:  # argparse's choices
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert value in err and allowed in err, err
    assert not (tmp_path / "out").exists()


def test_bad_figure_keywords_raise_bad_input(sweep, tmp_path):
    import forgetting

    df = forgetting.load_results(sweep)
    with pytest.raises(BadInput, match="--width: 'a4' is not a width; allowed: column"):
        forgetting.plot.figures(df, width="a4")
    with pytest.raises(BadInput, match="--bands: 'no' is not a boolean"):
        write_report([sweep], tmp_path / "out", bands="no")
    with pytest.raises(BadInput, match="--tasks: 9 is not an old task"):
        write_report([sweep], tmp_path / "out", tasks=[0, 9])
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


def test_a_method_keeps_its_colour_and_marker_whatever_else_a_report_holds(sweep):
    """The palette is keyed by the method's name and λ, not by which methods a report happens to hold."""
    import matplotlib.pyplot as plt

    import forgetting

    df = forgetting.load_results(sweep)

    def look(methods):
        figs = forgetting.plot.figures(df, methods=methods)
        try:
            (panel, *_) = [ax for ax in figs["forgetting_curves"].axes if ax.get_ylabel() == "accuracy (%)"]
            colour = {line.get_label(): tuple(np.round(line.get_color(), 6)) for line in panel.lines
                      if "λ" in line.get_label()}
            shape = {c.get_label(): c.get_paths()[0].vertices.round(6).tolist()
                     for c in figs["kl_vs_forgetting"].axes[0].collections if "λ" in str(c.get_label())}
            return colour, shape
        finally:
            for fig in figs.values():
                plt.close(fig)

    both, both_shapes = look(None)
    alone, alone_shapes = look("kl+rdrop")  # a report without kl
    one, one_shapes = look(["kl, λ=5"])  # one strength of kl
    rdrop = ["kl λ=0.5 + rdrop α=1", "kl λ=5 + rdrop α=1"]
    assert set(alone) == set(rdrop) and set(one) == {"kl, λ=5"}
    assert all(alone[k] == both[k] for k in rdrop) and one["kl, λ=5"] == both["kl, λ=5"]
    assert all(alone_shapes[k] == both_shapes[k] for k in rdrop) and one_shapes["kl, λ=5"] == both_shapes["kl, λ=5"]
    assert len(set(both.values())) == 4  # four experiments, four colours
    assert both_shapes["kl, λ=5"] != both_shapes["kl λ=5 + rdrop α=1"]  # kl and kl+rdrop: different markers


def test_titles_are_off_for_the_paper_style_unless_asked_and_dashed_is_named_only_when_drawn(sweep):
    import matplotlib.pyplot as plt

    import forgetting

    df = forgetting.load_results(sweep)

    def heads(**kw):
        figs = forgetting.plot.figures(df, methods=["kl, λ=5"], **kw)
        try:
            sup = {name: (fig._suptitle.get_text() if fig._suptitle is not None else "") for name, fig in figs.items()}
            sup["tradeoff"] = figs["tradeoff"].axes[0].get_title(loc="left")
            note = figs["forgetting_curves"].legends[0].get_title().get_text()
            return sup, note
        finally:
            for fig in figs.values():
                plt.close(fig)

    paper, note = heads()
    assert not any(paper.values()), paper  # the default (paper) style: no titles
    assert "dashed" not in note  # every run drawn is complete
    titled, _ = heads(titles=True)
    assert titled["forgetting_curves"].startswith("Accuracy of each old task") and "trade-off" in titled["tradeoff"]
    talk, _ = heads(style="talk")
    assert all(talk.values())
    with pytest.raises(BadInput, match="--titles"):
        forgetting.plot.figures(df, titles="yes")


def test_legends_say_what_a_reader_writes_lora_rank_and_temperature():
    from types import SimpleNamespace

    from forgetting.report_summary import readable

    assert readable("model.lora_rank", 8) == "LoRA r=8" and readable("model.lora_rank", 0) == ""
    assert readable("method.temperature", 2.0) == "T=2" and readable("loop.epochs", 3) == "epochs=3"

    def fake(rid, method, hparams, lora):
        config = {"method": {"name": method, "options": hparams}, "model": {"name": "gpt2", "options": {"lora_rank": lora}},
                  "hparams": hparams}
        return SimpleNamespace(run_id=rid, method=method, benchmark="b", scenario="domain", config=config,
                               experiment=lambda: {"method.name": method, "model.lora_rank": lora,
                                                   **{f"method.{k}": v for k, v in hparams.items()}})

    labels = assign_experiments([fake("a", "naive", {}, 0), fake("b", "naive", {}, 8),
                                 fake("c", "kl", {"kl_lambda": 1.0, "temperature": 1.0}, 0),
                                 fake("d", "kl", {"kl_lambda": 1.0, "temperature": 2.0}, 0)])
    assert labels == {"a": "naive", "b": "LoRA r=8", "c": "kl, λ=1 [T=1]", "d": "kl, λ=1 [T=2]"}


# --- reading results runs no code ----------------------------------------------------------------
def test_a_method_named_in_a_received_config_is_never_imported(sweep, tmp_path, monkeypatch):
    """Display names went through the method registry, which imports a dotted path: a received
    config.json naming `plantedpkg.evil` ran that module. The run is named by its recorded name."""
    pkg = tmp_path / "lib" / "plantedpkg"
    pkg.mkdir(parents=True)
    marker = tmp_path / "marker"
    (pkg / "__init__.py").write_text("")
    (pkg / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))

    def plant(d):
        c = json.loads((d / "config.json").read_text())
        c["method"]["name"] = "plantedpkg.evil"
        (d / "config.json").write_text(json.dumps(c))
    victim = corrupt(sweep, tmp_path, plant)
    out = tmp_path / "out"
    write_report([tmp_path / "results"], out, formats="png")  # the figures' labels are drawn once in any format
    assert not marker.exists()
    summary = pd.read_csv(out / "summary.csv", dtype=str)
    assert summary["label"].str.startswith("plantedpkg.evil").sum() == 1, summary["label"].tolist()
    assert victim.name in (out / "runs.csv").read_text()


@pytest.mark.parametrize("fault", ["read-only --out", "full disk"])
def test_an_out_that_cannot_be_written_is_one_line(fault, sweep, tmp_path, monkeypatch, capsys):
    """A read-only or full filesystem under --out gave a traceback. (Simulated: root writes anywhere.)"""
    import errno
    import os

    out = tmp_path / "out"
    if fault == "read-only --out":
        real = Path.mkdir

        def mkdir(self, *a, **k):
            if str(self).startswith(str(out)):
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real(self, *a, **k)
        monkeypatch.setattr(Path, "mkdir", mkdir)
    else:
        def replace(src, dst, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(os, "replace", replace)
    code = plot_main([str(sweep), "--out", str(out), "--formats", "png"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(out) in err, err
    assert ("Read-only file system" in err and code == 2) if fault.startswith("read") else \
        ("No space left on device" in err and code == 1)


def test_kl_fit_slope_interval_is_the_regression_t_interval_and_methods_get_their_own_lines(sweep):
    import matplotlib.pyplot as plt
    from scipy import stats

    import forgetting
    from forgetting.report_summary import kl_fit, run_table
    from forgetting.api import runs_from_frame

    df = forgetting.load_results(sweep)
    table = run_table(runs_from_frame(df))
    fit = kl_fit(table)
    d = table[table["status"] == "complete"].dropna(subset=["kl_new_task", "forgetting_max"])
    x, y = d["kl_new_task"].to_numpy(float), d["forgetting_max"].to_numpy(float)
    n = len(x)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()  # by hand, float64
    resid = y - (y.mean() + slope * (x - x.mean()))
    se = np.sqrt((resid ** 2).sum() / (n - 2) / ((x - x.mean()) ** 2).sum())
    half = stats.t.ppf(0.975, n - 2) * se
    assert fit["slope"] == pytest.approx(slope, rel=1e-9)
    assert fit["slope_ci95"] == pytest.approx((slope - half, slope + half), rel=1e-9)
    assert fit["n"] == 8 and fit["configs"] == 4  # 4 experiments x 2 seeds
    figs = forgetting.plot.figures(df)
    try:
        legend = [t.get_text() for t in figs["kl_vs_forgetting"].legends[0].get_texts()]
        title = figs["kl_vs_forgetting"].legends[0].get_title().get_text()
    finally:
        for f in figs.values():
            plt.close(f)
    pooled = [t for t in legend if t.startswith("new-task KL, all runs: slope")]
    assert len(pooled) == 1 and "n = 8, 4 configs" in pooled[0] and "slope [95% t-interval]" in title
    own = [t for t in legend if t.startswith("new-task KL, kl: slope") or t.startswith("new-task KL, kl+rdrop: slope")]
    assert len(own) == 2 and all("n = 4, 2 configs" in t for t in own), legend


def test_runs_of_different_budgets_are_drawn_in_figures_of_their_own(sweep, tmp_path, capsys):
    import matplotlib.pyplot as plt

    import forgetting

    results = tmp_path / "results"
    shutil.copytree(sweep, results)
    run(results, "--method", "kl", "--kl-lambda", "0.5", "--seed", "0", "--epochs", "2")  # another budget
    figs = forgetting.plot.figures(forgetting.load_results(results))
    try:
        names = sorted(figs)
    finally:
        for f in figs.values():
            plt.close(f)
    assert "split-digits-domain/epochs=1/tradeoff" in names and "split-digits-domain/epochs=2/tradeoff" in names
    assert "runs differ in epochs" in capsys.readouterr().err
    files = write_report([results], tmp_path / "report", formats="png")  # every format: the report fixture's test
    assert (tmp_path / "report" / "split-digits-domain" / "epochs=2" / "forgetting_curves.png") in files


def test_each_task_panel_starts_at_the_end_of_its_own_training(sweep, figs):
    """A task's forgetting curve exists only from the end of its training on: its panel starts there."""
    from forgetting.metrics import task_boundaries

    import forgetting

    df = forgetting.load_results(sweep)
    rows = df[df["run_id"] == df["run_id"].iloc[0]]
    bounds = task_boundaries(rows)
    ends = (bounds - bounds.iloc[0]).to_dict()  # fine-tuning step at which each task's training ended
    panels = [ax for ax in figs["forgetting_curves"].axes if ax.get_ylabel() == "accuracy (%)"]
    assert len(panels) == len(ends) - 1 >= 2
    firsts = [ax.get_xlim()[0] for ax in panels]
    assert firsts == [ends[k] for k in range(len(panels))]
    assert firsts[1] > firsts[0]  # not all from step 0
    assert {ax.get_xlim()[1] for ax in panels} == {max(ends.values())}
    for ax in panels:  # every point drawn lies inside its panel
        for line in ax.lines:
            x = np.asarray(line.get_xdata(), dtype=float)
            if len(x) and line.get_label() != "_nolegend_" and not line.get_linestyle() == ":":
                assert x.min() >= ax.get_xlim()[0]


def test_a_two_seed_band_that_would_cover_0_to_100_is_drawn_as_points_with_a_note(sweep):
    """Seeds at 5 % and 95 %: the 2-seed t-interval (t = 12.7) spans all of 0-100 %, so each seed is a point."""
    import matplotlib.pyplot as plt
    import forgetting

    df = forgetting.load_results(sweep)
    rdrop = df["method"] == "kl+rdrop"
    far, near = rdrop & (df["lambda"] == 5), rdrop & (df["lambda"] == 0.5)
    df.loc[far, "accuracy"] = np.where(df.loc[far, "seed"] == 0, 0.05, 0.95)
    df.loc[near, "accuracy"] = np.where(df.loc[near, "seed"] == 0, 0.60, 0.62)  # band 61 +- 12.7 %
    figs = forgetting.plot.figures(df, methods="kl+rdrop", tasks=[0])
    try:
        fig = figs["forgetting_curves"]
        (panel,) = [ax for ax in fig.axes if ax.get_ylabel() == "accuracy (%)"]
        bands = [c.get_label() for c in panel.collections if c.get_label().startswith("band")]
        assert bands == ["band: kl λ=0.5 + rdrop α=1"]  # the other keeps its band
        (dots,) = [c for c in panel.collections if c.get_label().startswith("seeds")]
        assert dots.get_label() == "seeds: kl λ=5 + rdrop α=1"
        ys = sorted(set(np.round(dots.get_offsets()[:, 1], 6)))
        assert ys == [5.0, 95.0]  # one point per seed and step, at each seed's own accuracy
        mean = next(line for line in panel.lines if line.get_label() == "kl λ=5 + rdrop α=1")
        assert np.allclose(mean.get_ydata(), 50.0)
        assert "dots: each of 2 seeds" in fig.legends[0].get_title().get_text().replace("\n", " ")
    finally:
        for f in figs.values():
            plt.close(f)
    df.loc[far, "accuracy"] = np.where(df.loc[far, "seed"] == 0, 0.30, 0.32)
    figs = forgetting.plot.figures(df, methods="kl+rdrop", tasks=[0])
    try:  # seeds that agree keep their bands and no note
        assert "dots" not in figs["forgetting_curves"].legends[0].get_title().get_text()
    finally:
        for f in figs.values():
            plt.close(f)


def test_accuracy_matrix_cells_show_the_mean_and_the_sd_over_seeds(sweep):
    """Seeds at 40 % and 50 % on every cell: mean 45, sd (n - 1) = 10 / sqrt(2) = 7.07, written "45\\n±7"."""
    import statistics

    import matplotlib.pyplot as plt

    import forgetting

    df = forgetting.load_results(sweep)
    two = (df["method"] == "kl+rdrop") & (df["lambda"] == 5)
    df.loc[two, "accuracy"] = np.where(df.loc[two, "seed"] == 0, 0.40, 0.50)
    sd = 100 * statistics.stdev([0.40, 0.50])
    assert f"{sd:.0f}" == "7"
    figs = forgetting.plot.figures(df, methods=["kl λ=5 + rdrop α=1", "kl, λ=0.5"])
    try:
        heat = figs["accuracy_matrix"]
        (panel,) = [ax for ax in heat.axes if ax.get_title(loc="left").startswith("kl λ=5 + rdrop")]
        assert "2 seeds: mean ± sd" in panel.get_title(loc="left").replace("\n", " ")
        cells = [t.get_text() for t in panel.texts]
        assert cells and set(cells) == {"45\n±7"}
        (other,) = [ax for ax in heat.axes if ax.get_title(loc="left").startswith("kl, λ=0.5")]
        assert all("\n±" in t.get_text() for t in other.texts)  # real seeds: the sd is there too
    finally:
        for f in figs.values():
            plt.close(f)


def test_every_curve_panel_names_its_own_steps(figs):
    panels = [ax for ax in figs["forgetting_curves"].axes if ax.get_ylabel() == "accuracy (%)"]
    assert {ax.get_xlabel() for ax in panels} == {"fine-tuning step"}
