"""The README's first command (the main job) runs end to end on the embedded default."""

import re
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, subprocess_env, write_suite


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_gives_the_two_commands_and_ci_runs_the_second():
    first, second = readme_commands()[:2]
    assert first == "./run_all.sh --quick"
    assert "pytest" in second
    assert second in (ROOT / ".ci" / "run").read_text(), ".ci/run must run the README's test command"


SMALL_STUDY = """
# The quick study's shape at a fraction of its cost: two methods, two lambdas, two seeds, one epoch.
name = "small"
[defaults]
model = "mlp"
epochs = 1
batch_size = 64
model_options = { hidden = [32], dropout = 0.0 }
[[experiment]]
benchmark = "split-digits"
scenarios = ["domain"]
seeds = [0, 1]
[[experiment.method]]
name = "kl"
grid.kl_lambda = [0, 1]
[[experiment.method]]
name = "ewc"
"""


@pytest.mark.slow
def test_first_command_runs_a_study_end_to_end(tmp_path):
    """The README's first command, on a small suite (--suite) instead of the quick one: run_all.sh runs
    the sweep, the report and the summary table. ``./run_all.sh --quick`` itself (minutes) is what the
    lead runs; tests/test_sweep.py checks that --quick selects benchmarks/quick.toml's runs."""
    first = readme_commands()[0]
    assert first == "./run_all.sh --quick"
    suite = write_suite(tmp_path, SMALL_STUDY, "small.toml")
    env = subprocess_env(FORGETTING_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    command = first.replace("--quick", f"--suite {suite}") + f" --results-dir {tmp_path / 'results'}"
    p = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "old tasks kept" in p.stdout and "forgetting" in p.stdout
    summary = pd.read_csv(tmp_path / "results" / "report" / "summary.csv")
    digits = summary[(summary.benchmark == "split-digits") & (summary.scenario == "domain") & (summary.method == "kl")]
    assert set(digits["lambda"]) >= {0.0, 1.0}
    assert set(summary.method) == {"kl", "ewc"} and (summary["status"] == "complete").all()
    report = tmp_path / "results" / "report"
    assert list(report.rglob("forgetting_curves.png")) and list(report.rglob("*.svg"))
