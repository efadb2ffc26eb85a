"""The README's first command (the main job) runs end to end on the embedded default."""

import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_gives_the_two_commands_and_ci_runs_the_second():
    first, second = readme_commands()[:2]
    assert first == "./run_all.sh --quick"
    assert "pytest" in second
    assert second in (ROOT / ".ci" / "run").read_text(), ".ci/run must run the README's test command"


@pytest.mark.slow
def test_first_command_runs_the_quick_study_end_to_end(tmp_path):
    first = readme_commands()[0]
    env = dict(os.environ, FORGETTING_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    # the command as written, with the results sent to a temporary directory
    p = subprocess.run(f"{first} --results-dir {tmp_path}", shell=True, cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "old tasks kept" in p.stdout and "forgetting" in p.stdout
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    digits = summary[(summary.benchmark == "split-digits") & (summary.scenario == "domain") & (summary.method == "kl")]
    assert set(digits["lambda"]) >= {0.0, 1.0}
    assert (summary["status"] == "complete").all()
    assert list((tmp_path / "report").rglob("forgetting_curves.png")) and list((tmp_path / "report").rglob("*.svg"))
