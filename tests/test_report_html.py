"""report.html (self-contained: every figure embedded and decodable) and runs.csv (every config field per run)."""

from __future__ import annotations

import base64
import io
import shlex
import shutil
from html.parser import HTMLParser

import pandas as pd
import pytest
from PIL import Image

from forgetting.plot import main as plot_main
from forgetting.run import build_parser, config_from_args, run_experiment

BASE = ["--epochs", "1", "--quiet", "--device", "cpu", "--method", "kl", "--kl-lambda", "1"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Three real runs: kl λ=1 (seeds 0 and 1) and kl λ=1 T=2 (seed 0); then the report as the CLI writes it."""
    results = tmp_path_factory.mktemp("results")
    ids = {}
    for name, extra in (("t1s0", []), ("t1s1", ["--seed", "1"]), ("t2s0", ["--temperature", "2"])):
        config = config_from_args(build_parser().parse_args([*BASE, "--results-dir", str(results), *extra]))
        run_experiment(config)
        ids[name] = config.run_id
    out = tmp_path_factory.mktemp("report")
    assert plot_main([str(results), "--out", str(out), "--quiet"]) == 0
    return results, out, ids


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict] = []
        self.tables = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "table":
            self.tables += 1

    def handle_data(self, data):
        self.text.append(data)


def test_runs_csv_has_a_row_per_run_with_every_config_field_and_a_command_that_gives_its_id(report):
    _, out, ids = report
    runs = pd.read_csv(out / "runs.csv").set_index("run_id")
    assert sorted(runs.index) == sorted(ids.values())
    # kl λ=1 and kl λ=1 T=2 told apart without config.json
    assert runs.loc[ids["t1s0"], "method.temperature"] == 1.0 and runs.loc[ids["t2s0"], "method.temperature"] == 2.0
    assert runs.loc[ids["t1s0"], "label"] != runs.loc[ids["t2s0"], "label"]
    for col in ("method.kl_lambda", "method.kl_direction", "model.hidden", "model.dropout", "epochs", "lr", "seed",
                "average_accuracy", "status", "command"):
        assert col in runs.columns, col
    assert runs.loc[ids["t1s1"], "seed"] == 1 and runs.loc[ids["t1s0"], "model.hidden"] == "[400, 400]"
    for run_id, command in runs["command"].items():
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "forgetting.run"]
        assert config_from_args(build_parser().parse_args(argv[3:])).run_id == run_id


def test_report_html_embeds_every_png_and_each_decodes_to_the_file(report):
    results, out, ids = report
    page = Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4 and len(page.images) == len(pngs)
    for img, png in zip(page.images, [out / f"{i['alt']}.png" for i in page.images]):
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)  # embedded: nothing to fetch
        data = base64.b64decode(img["src"][len(prefix):], validate=True)
        assert data == png.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.format == "PNG" and im.size == Image.open(png).size
    text = " ".join(page.text)
    assert page.tables == 2  # the summary, the runs
    assert f"python -m forgetting.plot {results} --out {out} --quiet" in text
    for run_id in ids.values():
        assert run_id in text
    assert text.count("python -m forgetting.run ") == 3
    assert "kl, λ=1 [T=2]" in text and "2 (seeds 0 1)" in text


def test_report_html_stands_alone_when_moved(report, tmp_path):
    _, out, _ = report
    moved = tmp_path / "elsewhere.html"
    shutil.copy(out / "report.html", moved)
    page = Page()
    page.feed(moved.read_text(encoding="utf-8"))
    assert all(i["src"].startswith("data:") for i in page.images)
    assert "<link" not in moved.read_text() and "<script" not in moved.read_text()



def test_plot_figures_from_load_results_draws_what_the_cli_writes(report, tmp_path):
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt
    import numpy as np

    import forgetting
    from forgetting.report_figures import save

    results, out, ids = report
    df = forgetting.load_results(results)
    figs = forgetting.plot.figures(df)
    assert sorted(figs) == sorted(p.stem for p in out.glob("*.png"))
    for name, fig in figs.items():
        save(fig, tmp_path, name)  # in the figure's own style and formats, in the report's order
        assert np.array_equal(mpimg.imread(tmp_path / f"{name}.png"), mpimg.imread(out / f"{name}.png")), name
    # any subset of the rows: here only temperature 1
    figs = forgetting.plot.figures(df[df["method.temperature"] == 1.0])
    legend = [t.get_text() for t in figs["tradeoff"].legends[0].get_texts()]
    assert any("kl, λ=1" in t for t in legend) and not any("temperature" in t for t in legend)
    for fig in figs.values():
        plt.close(fig)


# --- report.html in a real browser: Debian's chromium, headless -----------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Run on the page's load event (after every image has loaded or failed): what the browser made of each image.
CHECK = """<script>
addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify([...document.images].map(
    i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})));
  document.body.appendChild(out);
});
</script>"""
BROKEN = '<img alt="broken-control" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB">'


@pytest.mark.skipif(CHROMIUM is None, reason="needs a chromium on PATH (Debian: apt-get install chromium; "
                                             ".ci/run installs it)")
def test_report_html_shows_every_figure_in_a_headless_browser(report, tmp_path):
    """Chromium opens a copy of the page (with a script that reports on the load event, and one broken
    image as a control that the check can fail on) and dumps the DOM after the load event."""
    import html as html_module
    import json
    import re
    import subprocess

    _, out, _ = report
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("</body>") == 1
    copy = tmp_path / "report.html"
    copy.write_text(page.replace("</body>", BROKEN + CHECK + "</body>"), encoding="utf-8")
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', proc.stdout, flags=re.S)
    assert found, "the page's load event never ran in the browser: " + proc.stdout[-1000:]
    seen = json.loads(html_module.unescape(found.group(1)))
    [control] = [i for i in seen if i["alt"] == "broken-control"]
    assert control["width"] == 0  # a broken image is seen as broken
    images = [i for i in seen if i is not control]
    pngs = {p.stem: p for p in out.glob("*.png")}
    assert sorted(i["alt"] for i in images) == sorted(pngs)  # every figure the report embeds, once
    for img in images:
        with Image.open(pngs[img["alt"]]) as im:
            assert img["complete"] and (img["width"], img["height"]) == im.size, img  # decoded at its full size
