"""Reproducible rows, resumption after SIGKILL, and a NaN loss that stops the run cleanly."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from forgetting.config import RunConfig
from forgetting.registry import make_config
from forgetting.errors import RunFailed
from forgetting.run import main as run_main
from forgetting.run import run_experiment
from forgetting.results import read_run
from conftest import ROOT, cut_after_task, resumed_equals_whole, run_cli

TIMING = ["wall_time"]


def rows_of(tmp, seed, **kw):
    cfg = make_config(seed=seed, epochs=2, results_dir=str(tmp), progress=False, **kw)
    _, rows, _ = run_experiment(cfg, force=True)
    return rows.drop(columns=TIMING)


def test_same_seed_same_rows_other_seed_other_rows(tmp_path):
    a = rows_of(tmp_path / "a", 5, method="kl+rdrop")
    b = rows_of(tmp_path / "b", 5, method="kl+rdrop")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    c = rows_of(tmp_path / "c", 6, method="kl+rdrop")
    assert not a.drop(columns=["run_id", "seed"]).equals(c.drop(columns=["run_id", "seed"]))
    assert (a["accuracy"].to_numpy() != c["accuracy"].to_numpy()).any()


def test_manifest_records_what_reproduction_needs(tmp_path):
    cfg = make_config(seed=3, epochs=1, results_dir=str(tmp_path), progress=False)
    run_dir, _, _ = run_experiment(cfg)
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "complete" and m["seed"] == 3 and m["device"] == "cpu"
    assert m["versions"]["torch"] and m["versions"]["python"]
    assert m["determinism"]["use_deterministic_algorithms"] is True
    assert m["wall_time_s"] > 0 and m["completed_tasks"] == 5
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "checkpoints" / "task_0.safetensors"))
    assert "head.weight" in weights


def wait_for(predicate, timeout=300.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
def test_sigkill_during_third_task_then_resume_gives_identical_rows(tmp_path):
    args = ["--epochs", "12", "--method", "kl+rdrop", "--seed", "4", "--quiet"]
    env_cmd = [sys.executable, "-m", "forgetting.run", *args, "--results-dir", str(tmp_path / "killed")]
    proc = subprocess.Popen(env_cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifests = tmp_path / "killed"

    def in_third_task():
        for m in manifests.glob("*/manifest.json"):
            try:
                return json.loads(m.read_text())["completed_tasks"] >= 2
            except (ValueError, OSError):
                return False
        return False

    assert wait_for(in_third_task), "the run never reached its third task"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = next(manifests.iterdir())
    _, rows, manifest = read_run(run_dir)
    assert manifest["status"] == "running", "a killed run must not read as complete"
    assert manifest["completed_tasks"] == 2, "killed outside the third task: slow the run down"
    assert rows["trained_task"].max() <= 2  # complete rows only, the file parses

    # the resume and the uninterrupted run through the CLI's main in this process (a process start each spared:
    # the kill above is the real-process part; both read only what the killed run left on disk)
    assert run_main([*args, "--results-dir", str(tmp_path / "killed"), "--resume"]) == 0
    assert run_main([*args, "--results-dir", str(tmp_path / "whole")]) == 0
    _, resumed, m_resumed = read_run(run_dir)
    _, whole, _ = read_run(tmp_path / "whole" / run_dir.name)
    assert m_resumed["status"] == "complete" and m_resumed["resumed_at"][0]["after_task"] == 1
    pd.testing.assert_frame_equal(resumed.drop(columns=TIMING), whole.drop(columns=TIMING), check_exact=True)
    assert not resumed.drop(columns=TIMING).duplicated().any()


def test_nan_loss_stops_at_once_and_keeps_rows(tmp_path):
    cfg = make_config(lr=1e30, epochs=3, results_dir=str(tmp_path), progress=False)
    with pytest.raises(RunFailed) as exc:
        run_experiment(cfg)
    where = exc.value.where
    _, rows, manifest = read_run(tmp_path / cfg.run_id)
    assert manifest["status"] == "failed"
    assert manifest["failed_at"]["step"] == where["step"]
    assert f"step {where['step']}" in manifest["error"] and "task 0" in manifest["error"]
    assert (rows["phase"] == "init").sum() == 5  # the rows so far are kept
    # it stopped on the first non-finite loss: every step before it had a finite loss
    assert rows["global_step"].max() < where["step"]


def test_nan_loss_on_the_cli_is_one_line_without_traceback(tmp_path):
    p = run_cli("forgetting.run", "--lr", "1e30", "--quiet", "--results-dir", str(tmp_path))
    assert p.returncode == 1
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "non-finite loss" in lines[0] and "Traceback" not in p.stderr


@pytest.mark.parametrize("method", ["ewc", "ewc-online", "si", "mas", "l2sp", "replay+kl", "joint", "kl+rdrop"])
def test_resume_restores_method_state(method, tmp_path, monkeypatch):
    """EWC's Fisher, SI's importance, the replay buffer...: a resumed run gives the same rows."""
    cfg = make_config(method=method, epochs=2, seed=1, scenario="task", results_dir=str(tmp_path / "cut"),
                    progress=False, model_options={"hidden": [32], "dropout": 0.2})
    run_dir = resumed_equals_whole(cfg, tmp_path, monkeypatch)
    assert read_run(run_dir)[2]["resumed_at"][0]["after_task"] == 1


# --- claims: one process per run ----------------------------------------------------------------
def _lock(run_dir, **owner):
    from forgetting.claim import LOCK

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK).write_text(json.dumps({"token": "theirs", "since": "then", **owner}))
    return run_dir / LOCK


def test_claim_is_exclusive_and_released(tmp_path):
    from forgetting.claim import RunBusy, claim

    with claim(tmp_path / "r") as held:
        assert held.held() and json.loads(held.lock.read_text())["pid"] == os.getpid()
        with pytest.raises(RunBusy, match=f"pid {os.getpid()}"):
            claim(tmp_path / "r")
    assert not (tmp_path / "r" / "run.lock").exists()
    claim(tmp_path / "r").release()  # free again


def test_stale_claims_are_taken_over_and_live_ones_are_not(tmp_path):
    from forgetting.claim import HOST, STALE_S, RunBusy, claim

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = _lock(tmp_path / "dead", pid=dead.pid, host=HOST)
    c = claim(tmp_path / "dead")
    assert c.took_over and "is gone" in c.took_over and json.loads(lock.read_text())["pid"] == os.getpid()
    c.release()

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(tmp_path / "alive", pid=alive.pid, host=HOST)
        with pytest.raises(RunBusy, match=f"pid {alive.pid} on host {HOST}"):
            claim(tmp_path / "alive")
    finally:
        alive.kill()
        alive.wait()
    # another host: its pid cannot be checked from here, only its heartbeat
    _lock(tmp_path / "far", pid=1, host="elsewhere")
    with pytest.raises(RunBusy, match="on host elsewhere"):
        claim(tmp_path / "far")
    old = time.time() - STALE_S - 10
    os.utime(tmp_path / "far" / "run.lock", (old, old))
    c = claim(tmp_path / "far")
    assert "heartbeat stopped" in c.took_over
    c.release()


def test_a_claimed_run_is_refused_with_one_line_and_left_alone(tmp_path):
    from forgetting.claim import HOST
    from forgetting.run import build_parser, config_from_args

    args = ["--epochs", "1", "--results-dir", str(tmp_path), "--quiet"]
    run_id = config_from_args(build_parser().parse_args(args)).run_id
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = _lock(tmp_path / run_id, pid=alive.pid, host=HOST)
        p = run_cli("forgetting.run", *args)
        assert p.returncode == 1
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {alive.pid}" in lines[0] and str(lock) in lines[0], p.stderr
        assert sorted(x.name for x in (tmp_path / run_id).iterdir()) == ["run.lock"]  # nothing written
    finally:
        alive.kill()
        alive.wait()
    assert run_main(args) == 0  # its owner gone: taken over, run, released (in this process: a start spared)
    assert json.loads((tmp_path / run_id / "manifest.json").read_text())["status"] == "complete"
    assert not lock.exists()


def test_complete_only_with_every_tasks_rows(tmp_path, monkeypatch):
    """A run whose rows lack a task's is recorded failed, never complete."""
    from forgetting.train import Trainer

    original = Trainer.record

    def drop_task_3(self, phase, t, epoch, train_loss):
        return [] if t == 3 else original(self, phase, t, epoch, train_loss)

    monkeypatch.setattr(Trainer, "record", drop_task_3)
    cfg = make_config(epochs=1, results_dir=str(tmp_path), progress=False)
    with pytest.raises(RunFailed, match=r"rows of tasks \[3\] are missing"):
        run_experiment(cfg)
    manifest = json.loads((tmp_path / cfg.run_id / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failed_at"] == {"tasks": [3]}


# --- faults: corrupt checkpoints, a full disk, file modes ----------------------------------------
@pytest.mark.parametrize("damage, expect", [
    ("truncate task_2.state.pt", "resuming from the end of task 1"),
    ("garbage task_2.safetensors", "resuming from the end of task 1"),
    ("garbage task_0.safetensors", "starting again from the first task"),
])
def test_corrupt_checkpoint_on_resume_names_the_file_and_falls_back(damage, expect, tmp_path, monkeypatch, caplog):
    cfg = make_config(method="ewc", epochs=1, seed=2, results_dir=str(tmp_path / "cut"), progress=False,
                    model_options={"hidden": [16]})
    run_dir = cut_after_task(cfg, 2, monkeypatch)
    how, name = damage.split()
    bad = run_dir / "checkpoints" / name
    if how == "truncate":
        bad.write_bytes(bad.read_bytes()[:100])
    else:
        bad.write_bytes(b"not a safetensors file at all" * 10)
    caplog.set_level(logging.WARNING, logger="forgetting")
    _, _, status = run_experiment(cfg, resume=True)
    assert status == "complete"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(bad) in warnings[0] and expect in warnings[0], warnings
    _, resumed, manifest = read_run(run_dir)
    assert manifest["status"] == "complete"
    assert [r["after_task"] for r in manifest.get("resumed_at", [])] == ([1] if "task 1" in expect else [])
    cfg.results_dir = str(tmp_path / "whole")
    whole_dir, _, _ = run_experiment(cfg)
    pd.testing.assert_frame_equal(resumed.drop(columns=TIMING), read_run(whole_dir)[1].drop(columns=TIMING),
                                  check_exact=True)


def test_every_file_of_a_run_has_the_same_mode(tmp_path):
    """Checkpoints too: safetensors' writer alone would leave 0600 where the rest is 0644."""
    cfg = make_config(epochs=1, results_dir=str(tmp_path), progress=False, model_options={"hidden": [16]})
    run_dir, _, _ = run_experiment(cfg)
    modes = {p.relative_to(run_dir).as_posix(): p.stat().st_mode & 0o777 for p in run_dir.rglob("*") if p.is_file()}
    assert "checkpoints/task_0.safetensors" in modes and len(set(modes.values())) == 1, modes
    assert modes["metrics.csv"] == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs (needs root and mount rights; skipped otherwise)."""
    where = tmp_path / "disk"
    where.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_is_one_line_naming_the_path_and_where(tiny_disk):
    p = run_cli("forgetting.run", "--epochs", "1", "--quiet", "--results-dir", str(tiny_disk / "r"))
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "No space left on device" in lines[0] and f"cannot write {tiny_disk / 'r'}" in lines[0]
    assert "(at task " in lines[0] and ", step " in lines[0]
    _, rows, manifest = read_run(next((tiny_disk / "r").iterdir()))
    assert manifest["status"] in ("failed", "running") and len(rows) > 0  # what is on disk parses


def test_a_write_that_fails_stops_the_run_with_the_path_and_position(tmp_path, monkeypatch):
    """ENOSPC simulated on the first write of metrics.csv that holds a row of task 1 (no tmpfs needed)."""
    import errno

    from forgetting import results
    from forgetting.errors import WriteFailed

    original = results.atomic_write_text

    def fill_up(path, text, *args):
        if Path(path).name == "metrics.csv" and len(text.splitlines()) > 1 + 5 * 3:  # header, init, task 0's 2 epochs
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        original(path, text, *args)

    monkeypatch.setattr(results, "atomic_write_text", fill_up)
    cfg = make_config(epochs=2, results_dir=str(tmp_path), progress=False, model_options={"hidden": [16]})
    with pytest.raises(WriteFailed) as exc:
        run_experiment(cfg)
    run_dir = tmp_path / cfg.run_id
    assert exc.value.path == str(run_dir / "metrics.csv") and "No space left on device" in str(exc.value)
    where = exc.value.where
    assert where["task"] == 1 and where["epoch"] in (1, 2) and where["step"] > 0
    _, rows, manifest = read_run(run_dir)
    assert manifest["status"] == "failed" and manifest["failed_at"] == where
    assert rows["trained_task"].max() == 0 and len(rows) == 15  # the last version written whole


def test_a_checkpoint_written_in_the_background_that_fails_stops_the_run_naming_it(tmp_path, monkeypatch):
    """The checkpoint after task 0 cannot be written (ENOSPC): its write runs while task 1 trains, and the run
    stops failed naming the file; the manifest never says task 0 is complete, no half-written file is left."""
    import errno

    from forgetting import checkpoint
    from forgetting.checkpoint import boundaries
    from forgetting.errors import WriteFailed

    original = checkpoint.atomic_write

    def fill_up(path, write, *args):
        if Path(path).name == "task_0.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        original(path, write, *args)

    monkeypatch.setattr(checkpoint, "atomic_write", fill_up)
    cfg = make_config(epochs=1, results_dir=str(tmp_path), progress=False, model_options={"hidden": [16]})
    with pytest.raises(WriteFailed) as exc:
        run_experiment(cfg)
    run_dir = tmp_path / cfg.run_id
    assert exc.value.path == str(run_dir / "checkpoints" / "task_0.safetensors")
    _, rows, manifest = read_run(run_dir)
    assert manifest["status"] == "failed" and manifest["completed_tasks"] == 0
    assert rows["trained_task"].max() >= 0  # task 0's rows were on disk before its checkpoint was written
    assert boundaries(run_dir) == [] and not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_resume_restores_the_der_buffer(tmp_path, monkeypatch):
    """DER's reservoir (references, stored logits, labels, count seen) comes back from the checkpoint."""
    cfg = make_config(method="der", epochs=1, seed=3, scenario="task", results_dir=str(tmp_path / "cut"),
                      progress=False, model_options={"hidden": [16]})
    run_dir = cut_after_task(cfg, 1, monkeypatch)
    assert run_experiment(cfg, resume=True)[2] == "complete"
    cfg.results_dir = str(tmp_path / "whole")
    whole_dir, _, _ = run_experiment(cfg)
    resumed, manifest = read_run(run_dir)[1:]
    assert manifest["resumed_at"][0]["after_task"] == 1
    pd.testing.assert_frame_equal(resumed.drop(columns=TIMING), read_run(whole_dir)[1].drop(columns=TIMING),
                                  check_exact=True)


# --- files read back as written ------------------------------------------------------------------
def test_a_run_id_that_looks_like_a_number_reads_back_as_text_and_resumes(tmp_path, monkeypatch):
    """`--epochs 3 --seed 197` has the id 8043322e4503, which a type-guessing CSV reader turns into inf:
    the resumed rows kept `inf` as run_id and the run failed with `rows of 2 runs given`."""
    import forgetting

    cfg = make_config(epochs=3, seed=197, results_dir=str(tmp_path / "cut"), progress=False)
    cfg = forgetting.registry.resolve(cfg)
    float(cfg.run_id)  # the point of the test: an id that parses as a number
    run_dir = resumed_equals_whole(cfg, tmp_path, monkeypatch)
    rows = read_run(run_dir)[1]
    assert rows["run_id"].map(type).eq(str).all() and set(rows["run_id"]) == {cfg.run_id}
    loaded = forgetting.load_results(tmp_path / "cut")
    assert set(loaded["run_id"]) == {cfg.run_id}


def test_manifest_is_strict_json_even_with_non_finite_numbers(tmp_path):
    from forgetting.results import atomic_write_json

    atomic_write_json(tmp_path / "m.json", {"a": float("inf"), "b": [float("nan"), -float("inf"), 1.5]})
    text = (tmp_path / "m.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    obj = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert obj == {"a": "inf", "b": ["nan", "-inf", 1.5]} and float(obj["a"]) == float("inf")


# --- nothing received runs code ------------------------------------------------------------------
class _Payload:
    """Unpickled, it writes a marker file: the proof that a loader ran code from a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_a_planted_checkpoint_state_runs_no_code_on_resume(tmp_path, monkeypatch, caplog):
    """torch.load(weights_only=False) ran a planted task_<t>.state.pt's payload on --resume."""
    import torch

    cfg = make_config(method="ewc", epochs=1, seed=2, results_dir=str(tmp_path / "cut"), progress=False,
                      model_options={"hidden": [16]})
    run_dir = cut_after_task(cfg, 2, monkeypatch)
    marker = tmp_path / "marker"
    bad = run_dir / "checkpoints" / "task_2.state.pt"
    torch.save({"task": 2, "methods": [_Payload(marker)]}, bad)
    caplog.set_level(logging.WARNING, logger="forgetting")
    assert run_experiment(cfg, resume=True)[2] == "complete"
    assert not marker.exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(bad) in warnings[0] and "resuming from the end of task 1" in warnings[0]


# --- locks that tell the truth -------------------------------------------------------------------
def test_a_live_owner_on_this_host_keeps_its_lock_whatever_its_heartbeat_age(tmp_path):
    """A paused owner (SIGSTOP, a laptop asleep) lost its run once its heartbeat was 5 minutes old."""
    from forgetting.claim import HOST, STALE_S, RunBusy, _start_time, claim

    paused = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        paused.send_signal(signal.SIGSTOP)
        lock = _lock(tmp_path / "paused", pid=paused.pid, host=HOST, pid_started=_start_time(paused.pid))
        old = time.time() - 10 * STALE_S
        os.utime(lock, (old, old))
        with pytest.raises(RunBusy, match=f"pid {paused.pid} on host {HOST}"):
            claim(tmp_path / "paused")
        # the same pid, but another process than the one that took the lock: it is gone
        _lock(tmp_path / "reused", pid=paused.pid, host=HOST, pid_started=_start_time(paused.pid) - 1)
        c = claim(tmp_path / "reused")
        assert "names another process" in c.took_over
        c.release()
    finally:
        paused.kill()
        paused.wait()


def test_a_full_disk_before_the_start_is_one_line_and_leaves_no_lock(tmp_path, monkeypatch, capsys):
    """ENOSPC while writing run.lock gave a traceback and left an empty lock refusing the next try."""
    import errno

    from forgetting import claim as claim_mod
    from forgetting.run import main

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(claim_mod.os, "fsync", full)
    args = ["--epochs", "1", "--quiet", "--results-dir", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "No space left on device" in err and "run.lock" in err, err
    assert not list((tmp_path / "r").rglob("run.lock")) and not list((tmp_path / "r").iterdir())
    monkeypatch.undo()
    assert main(args) == 0  # the next try is not refused


def test_a_linked_checkpoints_folder_is_replaced_not_written_through(tmp_path, monkeypatch):
    """A symlinked RUN_DIR/checkpoints made the run write its checkpoints wherever the link pointed."""
    import shutil

    cfg = make_config(epochs=1, seed=2, results_dir=str(tmp_path / "cut"), progress=False, model_options={"hidden": [16]})
    run_dir = cut_after_task(cfg, 2, monkeypatch)
    outside = tmp_path / "elsewhere"
    shutil.move(str(run_dir / "checkpoints"), outside)
    (run_dir / "checkpoints").symlink_to(outside, target_is_directory=True)
    before = sorted(p.name for p in outside.iterdir())
    assert run_experiment(cfg, resume=True)[2] == "complete"
    assert sorted(p.name for p in outside.iterdir()) == before  # nothing written through the link
    folder = run_dir / "checkpoints"
    assert not folder.is_symlink() and folder.is_dir() and (folder / "task_4.safetensors").is_file()
    assert "resumed_at" not in read_run(run_dir)[2]  # a linked folder is not the run's: started again


def test_resume_with_force_is_refused_in_one_line(tmp_path, capsys):
    """--resume --force silently dropped --force."""
    from forgetting.run import main

    assert main(["--epochs", "1", "--quiet", "--resume", "--force", "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--resume and --force" in err and "pick one" in err, err
    assert not (tmp_path / "r").exists()
