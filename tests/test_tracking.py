"""--log-to: what a real run logged, read back from each tracker's own files or store, offline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forgetting.registry import make_config

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

# 5 tasks of 8 steps; evaluations every 7 steps never fall on an epoch's end
ARGS = ["--epochs", "1", "--device", "cpu", "--quiet", "--eval-every", "7"]


def run_main(*argv: str) -> int:
    from forgetting.run import main

    return main(list(argv))


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One real run (split-digits, 5 tasks x 1 epoch, an evaluation every 7 steps) logged to all three."""
    results = tmp_path_factory.mktemp("tracked")
    env = {k: os.environ.pop(k) for k in ("MLFLOW_TRACKING_URI", "WANDB_MODE") if k in os.environ}
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))  # to see that nothing lands where the run was started
    try:
        assert run_main(*ARGS, "--results-dir", str(results), "--log-to", "tensorboard", "--log-to", "mlflow",
                        "--log-to", "wandb") == 0
        assert not os.listdir("."), os.listdir(".")
    finally:
        os.chdir(cwd)
        os.environ.update(env)
    (run_dir,) = [p.parent for p in results.glob("*/metrics.csv")]
    return results, run_dir, pd.read_csv(run_dir / "metrics.csv"), json.loads((run_dir / "config.json").read_text())


def expected_series(rows: pd.DataFrame, task: int, metric: str = "accuracy") -> list[tuple[int, float]]:
    d = rows[rows["eval_task"] == task]
    return list(zip(d["global_step"].astype(int), d[metric].astype(float)))


def steps_per_task(rows: pd.DataFrame) -> dict[int, int]:
    ep = rows[rows["phase"] == "epoch"]
    return ep.groupby("trained_task")["global_step"].max().to_dict()


def test_run_id_does_not_change_with_trackers():
    plain = make_config(epochs=1, device="cpu")
    tracked = make_config(epochs=1, device="cpu", log_to=["tensorboard", "wandb"])
    assert tracked.log_to == ["tensorboard", "wandb"] and plain.log_to == []
    assert tracked.run_id == plain.run_id


def test_tensorboard_event_files_hold_every_evaluation_and_every_step_loss(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, rows, _ = logged
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for k in range(5):
        for metric in ("accuracy", "loss"):
            got = [(e.step, e.value) for e in acc.Scalars(f"eval/{metric}/task_{k}")]
            want = expected_series(rows, k, metric)
            assert [s for s, _ in got] == [s for s, _ in want]
            np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)
    # one total loss per optimiser step; the epoch means in metrics.csv are their means
    losses = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert sorted(losses) == list(range(1, int(rows["global_step"].max()) + 1))
    assert "train/kl" in tags and "train/data_loss" in tags
    ep = rows[(rows["phase"] == "epoch") & (rows["eval_task"] == 0)].sort_values("global_step")
    start = 0
    for step, mean in zip(ep["global_step"], ep["train_loss"]):
        assert np.mean([losses[s] for s in range(start + 1, step + 1)]) == pytest.approx(mean, rel=1e-5)
        start = step
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "method.options.kl_lambda = 1.0" in config_text


def test_mlflow_local_store_holds_params_metrics_and_run_files(logged):
    import mlflow
    from mlflow.tracking import MlflowClient

    results, run_dir, rows, config = logged
    uri = f"sqlite:///{results / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=["forgetting/split-digits-domain"])
    assert len(found) == 1
    run = found.iloc[0]
    assert run["tags.forgetting.run_id"] == run_dir.name and run["status"] == "FINISHED"
    assert run["params.method.options.kl_lambda"] == "1.0"
    assert run["params.loop.epochs"] == "1" and run["params.loop.eval_every"] == "7"
    for k in range(5):
        hist = sorted((m.step, m.value) for m in client.get_metric_history(run["run_id"], f"eval/accuracy/task_{k}"))
        want = expected_series(rows, k)
        assert [s for s, _ in hist] == [s for s, _ in want]
        np.testing.assert_allclose([v for _, v in hist], [v for _, v in want], rtol=1e-6)
    assert len(client.get_metric_history(run["run_id"], "train/loss")) == int(rows["global_step"].max())
    assert run["artifact_uri"].startswith((results / "mlartifacts").as_uri())
    local = client.download_artifacts(run["run_id"], "metrics.csv", str(results / "dl"))
    assert Path(local).read_text() == (run_dir / "metrics.csv").read_text()


def test_wandb_offline_run_directory_holds_config_history_and_files(logged):
    _, run_dir, rows, _ = logged
    (offline,) = list((run_dir / "wandb").glob("offline-run-*"))
    log = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(offline)],
                         capture_output=True, text=True, timeout=120)
    assert log.returncode == 0, log.stderr
    records = [json.loads(line) for line in log.stdout.splitlines() if line.startswith("{")]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    (config,) = [r["run"]["config"]["update"] for r in records if r["type"] == "run"]
    assert config["method.options.kl_lambda"] == 1.0 and config["loop.eval_every"] == 7
    for k in range(5):
        got = [(h["global_step"], h[f"eval/accuracy/task_{k}"]) for h in history if f"eval/accuracy/task_{k}" in h]
        want = expected_series(rows, k)
        assert [s for s, _ in got] == [s for s, _ in want]
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)
    assert sorted(h["global_step"] for h in history if "train/loss" in h) == \
        list(range(1, int(rows["global_step"].max()) + 1))
    saved = {f["path"] for r in records if r["type"] == "files" for f in r["files"]["files"]}
    assert {"config.json", "metrics.csv", "manifest.json"} <= saved
    assert (offline / "files" / "metrics.csv").read_text() == (run_dir / "metrics.csv").read_text()
    assert [r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit"] == [0]


def test_a_missing_tracker_library_names_the_extra_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import forgetting.extras

    real = forgetting.extras.find_spec
    monkeypatch.setattr(forgetting.extras, "find_spec", lambda m: None if m == "mlflow" else real(m))
    assert run_main(*ARGS, "--results-dir", str(tmp_path / "r"), "--log-to", "mlflow") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--log-to mlflow needs the [track] extra" in err and "pip install 'forgetting[track]'" in err
    assert not (tmp_path / "r").exists()


def test_an_unknown_tracker_is_refused_with_the_choices(tmp_path, capsys):
    assert run_main(*ARGS, "--results-dir", str(tmp_path / "r"), "--log-to", "neptune") == 2
    err = capsys.readouterr().err
    assert "--log-to: bad value 'neptune', allowed: tensorboard, mlflow, wandb" in err
    assert not (tmp_path / "r").exists()


def test_a_reports_figures_go_to_the_tracker_as_images(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from forgetting.tracking import log_report

    fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "tradeoff.png")
    plt.close(fig)
    log_report(["tensorboard"], [tmp_path / "tradeoff.png", tmp_path / "summary.csv"], tmp_path, tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    (image,) = acc.Images("figures/tradeoff")
    assert (image.width, image.height) == (100, 50)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_through_a_local_server_with_a_sqlite_backend(tmp_path, monkeypatch):
    import mlflow

    port = free_port()
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    server = subprocess.Popen([mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--artifacts-destination", str(tmp_path / "artifacts")],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        assert run_main("--epochs", "1", "--device", "cpu", "--quiet",
                        "--results-dir", str(tmp_path / "r"), "--log-to", "mlflow") == 0
        rows = pd.read_csv(next((tmp_path / "r").glob("*/metrics.csv")))
        mlflow.set_tracking_uri(url)
        found = mlflow.search_runs(experiment_names=["forgetting/split-digits-domain"])
        assert len(found) == 1 and found.iloc[0]["status"] == "FINISHED"
        client = mlflow.tracking.MlflowClient(url)
        hist = sorted((m.step, m.value) for m in client.get_metric_history(found.iloc[0]["run_id"], "eval/accuracy/task_1"))
        np.testing.assert_allclose([v for _, v in hist], [v for _, v in expected_series(rows, 1)], rtol=1e-6)
        assert not (tmp_path / "r" / "mlflow.db").exists()  # the server's store, not the local default
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
