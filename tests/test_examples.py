"""examples/quickstart.ipynb runs top to bottom in a fresh kernel of this Python (the venv's), on the code
under test, and shows what its text says: a table with every λ, the figures as images."""

from __future__ import annotations

import base64
import json
import os
import re
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
PROBE = "import sys, forgetting; print(sys.executable); print(forgetting.__file__)"


def tagged(nb, tag: str) -> list:
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def execute(tmp):
    """The notebook run by nbclient in a temporary folder, with a first cell that says which Python and
    which ``forgetting`` the kernel has. The kernel spec ``python3`` is this interpreter's, in a folder only
    this test reads (JUPYTER_PATH), so neither a kernel registered elsewhere nor the installed copy of the
    package takes part; Jupyter's and IPython's own files go to the temporary folder too."""
    spec = tmp / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE))
    env = {"JUPYTER_PATH": str(tmp / "jupyter"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "IPYTHONDIR": str(tmp / "ipython"), "MPLCONFIGDIR": str(tmp / "mpl"), "TMPDIR": str(tmp),
           "OMP_NUM_THREADS": "1",  # beside pytest -n 2 on 2 cores: two torch threads each would oversubscribe
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        work = tmp / "cwd"
        work.mkdir()
        NotebookClient(nb, kernel_name="python3", timeout=300, startup_timeout=120, resources={"metadata": {"path": str(work)}}).execute()
    return nb


def test_the_stored_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def check_the_kernel_is_this_python_on_the_code_under_test(nb):
    lines = "".join(o.get("text", "") for o in nb.cells[0].outputs).split()
    assert lines == [sys.executable, str(ROOT / "forgetting" / "__init__.py")]


def lambdas(nb) -> list[float]:
    """The notebook's own λ list (``LAMBDAS = [...]``), so the test follows an edit of the sweep."""
    return [float(v) for v in re.search(r"LAMBDAS = \[(.*?)\]", "".join(c.source for c in nb.cells)).group(1).split(",")]


def check_no_cell_failed_or_warned_and_the_runs_went_to_a_temporary_directory(nb, tmp):
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert [o for o in outputs if o.output_type == "error"] == []
    assert [o.text for o in outputs if o.get("name") == "stderr"] == []  # no warning for a reader to wonder about
    [results] = list(tmp.glob("forgetting-quickstart-*"))  # tempfile.mkdtemp in the notebook (TMPDIR)
    assert len([d for d in results.iterdir() if d.is_dir()]) == 2 * (len(lambdas(nb)) + 1)  # naive and each λ, 2 seeds
    assert list((tmp / "cwd").iterdir()) == []  # nothing written where the notebook runs


def check_the_table_has_naive_and_every_lambda_and_the_report_s_numbers(nb, tmp):
    from forgetting.report_runs import load_runs
    from forgetting.report_summary import run_table

    [cell] = tagged(nb, "table")
    [out] = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert "text/html" in out.data  # shown as a table in Jupyter
    row = re.compile(r"^(naive|kl λ=\S+)\s+(\d+\.\d) ± (\d+\.\d)\s+(-?\d+\.\d) ± (\d+\.\d)\s*$")
    found = [m.groups() for m in map(row.match, out.data["text/plain"].splitlines()) if m]
    assert [f[0] for f in found] == ["naive"] + [f"kl λ={lam:g}" for lam in lambdas(nb)]
    # the same mean ± sd over seeds as python -m forgetting.plot's per-run table gives
    runs = run_table(load_runs(list(tmp.glob("forgetting-quickstart-*"))))
    runs["experiment"] = [m if m == "naive" else f"kl λ={lam:g}" for m, lam in zip(runs["method"], runs["lambda"])]
    for label, *shown in found:
        g = runs[runs["experiment"] == label]
        assert len(g) == 2, label  # two seeds
        want = [100 * g["average_accuracy"].mean(), 100 * g["average_accuracy"].std(),
                100 * g["forgetting_max"].mean(), 100 * g["forgetting_max"].std()]
        assert [float(v) for v in shown] == pytest.approx(want, abs=0.051), label


def check_the_figure_cells_show_images(nb):
    cells = tagged(nb, "figure")
    assert len(cells) == 2
    for cell in cells:
        pngs = [o.data["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(pngs) == 1, [o.get("data", {}).keys() for o in cell.outputs]
        assert base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.slow  # a kernel and 8 short runs: about 20 s under load
def test_the_notebook_runs_and_shows_what_it_says(tmp_path):
    """One test, so that pytest -n 2 executes the notebook once (a module fixture runs once per worker)."""
    nb = execute(tmp_path)
    check_the_kernel_is_this_python_on_the_code_under_test(nb)
    check_no_cell_failed_or_warned_and_the_runs_went_to_a_temporary_directory(nb, tmp_path)
    check_the_table_has_naive_and_every_lambda_and_the_report_s_numbers(nb, tmp_path)
    check_the_figure_cells_show_images(nb)
