"""One run on several processes gives the rows of one process (``forgetting.distributed``).

The launched tests start ``accelerate launch`` with 2 CPU processes (gloo) and compare every row with a run in
this process at the same config: equal within float-summation tolerance. Why not bitwise: the batch's mean loss is
the share-weighted sum of the two shards' means, and the gradient the sum of the two ranks' gradients, so the same
float32 terms are added in another order (a few units in the last place per step, 1e-7 relative), which the steps
carry forward; accuracies may then differ by an example whose two top logits are that close. Tolerances: 1e-4
relative (plus 1e-5 absolute) on every loss, KL and NLL column, one test example on an accuracy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from forgetting import distributed
from forgetting.distributed import World, take
from forgetting.errors import BadInput
from forgetting.registry import make_config
from forgetting.results import read_run
from forgetting.running import run_experiment
from forgetting.streams.base import Batch

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("accelerate")

MLP = {"benchmark": "split-digits", "scenario": "class", "model": "mlp", "epochs": 1, "batch_size": 30,
       "device": "cpu", "progress": False, "hidden": [32], "dropout": 0.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], n: int = 2, timeout: int = 300, fsdp: bool = False) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``args`` on ``n`` CPU processes (gloo), this tree's code first on the path;
    ``fsdp``: ``--use_fsdp`` instead of ``--multi_gpu`` (accelerate then sets ACCELERATE_USE_FSDP on every rank)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp" if fsdp else "--multi_gpu", "--num_processes", str(n),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def assert_same_rows(one: pd.DataFrame, two: pd.DataFrame) -> None:
    assert len(one) == len(two) and list(one["eval_task"]) == list(two["eval_task"])
    for column in ("loss", "train_loss", "kl_base", "nll"):
        if column in one and one[column].notna().any():
            a, b = one[column].to_numpy(float), two[column].to_numpy(float)
            assert (pd.isna(a) == pd.isna(b)).all(), column
            ok = ~pd.isna(a)
            assert abs(a[ok] - b[ok]).max() <= 1e-5 + 1e-4 * abs(a[ok]).max(), (column, abs(a[ok] - b[ok]).max())
    for column in ("accuracy", "answer_accuracy"):
        if column in one and one[column].notna().any():
            diff = (one[column] - two[column]).abs().fillna(0).max()
            assert diff <= 1.0 / 50, (column, diff)  # at most one example of a test set of > 50
    assert list(one["global_step"]) == list(two["global_step"])


def run_here(options: dict, results_dir: Path) -> pd.DataFrame:
    _, rows, status = run_experiment(make_config(**options, results_dir=str(results_dir)), resolved=True)
    assert status == "complete"
    return rows


def launched_rows(options: dict, results_dir: Path) -> tuple[pd.DataFrame, dict]:
    cfg = make_config(**options, results_dir=str(results_dir))
    _, rows, manifest = read_run(results_dir / cfg.run_id)
    return rows, manifest


# --- without a launch ---------------------------------------------------------------------------

def test_the_shards_of_a_batch_are_the_batch():
    batch = Batch({"input_ids": torch.arange(14).view(7, 2), "labels": torch.arange(14).view(7, 2)},
                  torch.arange(7), torch.zeros(7, dtype=torch.long), torch.arange(7) * 3)
    parts = [World(rank=r, size=3).shard(batch) for r in range(3)]
    assert [len(p) for p in parts] == [3, 2, 2]
    assert torch.equal(torch.cat([p.index for p in parts]), batch.index)
    assert torch.equal(torch.cat([p.inputs["input_ids"] for p in parts]), batch.inputs["input_ids"])
    assert World().shard(batch) is batch


@pytest.mark.parametrize("lm", [False, True])
def test_share_weighted_shard_gradients_sum_to_the_batch_gradient(lm):
    """The rule the ranks follow, in float64: sum over shards of (shard units / batch units) * grad(shard mean)
    equals grad(batch mean), for a mean over examples and over tokens that carry loss (uneven per row)."""
    torch.manual_seed(0)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    labels = torch.randint(0, 4, (7, 3))
    if lm:
        labels[0, 1:] = -100
        labels[3, 2] = -100
        labels[5, :] = -100
    batch = Batch({"x": x, "labels": labels}, labels[:, 0], torch.zeros(7, dtype=torch.long), torch.arange(7))

    def units(b):
        return int((b.inputs["labels"] != -100).sum()) if lm else len(b)

    def loss(b):
        logits = b.inputs["x"] @ w
        if lm:
            return torch.nn.functional.cross_entropy(logits.reshape(-1, 4), b.inputs["labels"].reshape(-1),
                                                     ignore_index=-100)
        return torch.nn.functional.cross_entropy(logits[:, 0], b.targets)

    (whole,) = torch.autograd.grad(loss(batch), w)
    summed = torch.zeros_like(w)
    for r in range(3):
        part = World(rank=r, size=3).shard(batch)
        summed += units(part) / units(batch) * torch.autograd.grad(loss(part), w)[0]
    assert torch.allclose(summed, whole, rtol=1e-12, atol=1e-14)


def test_causal_lm_loss_units_are_the_tokens_that_carry_loss():
    from forgetting.objectives.causal_lm import CausalLM

    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])
    batch = Batch({"input_ids": labels.clamp(min=0), "labels": labels}, labels[:, 0], torch.zeros(2), torch.arange(2))
    assert CausalLM.loss_units(None, batch) == 4  # positions 1..3 whose label is not ignored


@pytest.mark.parametrize("method,extra,needle", [
    ("der", {}, "der cannot run on 2 processes"),
    ("kl+replay", {}, "--kl-on-replayed"),
    ("si", {}, "allowed with a launcher: naive, kl, ewc"),
])
def test_methods_that_cannot_split_are_refused(method, extra, needle):
    cfg = make_config(**{**MLP, "method": method, **extra})
    with pytest.raises(BadInput, match=needle):
        distributed.check(cfg, 2)
    distributed.check(cfg, 1)  # one process: anything goes


@pytest.mark.parametrize("options,needle", [
    ({"method": "ewc"}, r"^--method ewc: ewc is not supported under FSDP .* allowed with an FSDP launch: naive, kl"),
    ({"method": "kl+replay", "kl_on_replayed": True}, r"^--method kl\+replay: replay is not supported under FSDP"),
    ({"method": "naive", "amp": "bf16"}, r"^--amp bf16: not checked under FSDP; allowed with an FSDP launch: off"),
])
def test_what_fsdp_does_not_carry_is_refused_in_one_line(monkeypatch, options, needle):
    """accelerate launch --use_fsdp (or an FSDP config) sets ACCELERATE_USE_FSDP on every rank: methods whose state
    reads whole parameters, and what is not checked sharded, are refused before anything is written; without
    FSDP (DDP) or on one process they run."""
    cfg = make_config(**{**MLP, **options})
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(BadInput, match=needle):
        distributed.check(cfg, 2)
    distributed.check(make_config(**MLP, method="kl"), 2)  # naive and kl run sharded
    distributed.check(cfg, 1)  # one process: no launch, nothing to shard
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    distributed.check(cfg, 2)


def test_a_model_without_a_sharding_plan_is_refused_under_fsdp():
    from types import SimpleNamespace

    mlp = make_config(**MLP, method="kl")
    cfg = SimpleNamespace(method=mlp.method, model=SimpleNamespace(name="bert"), amp="off")
    with pytest.raises(BadInput, match=r"^--model bert: no FSDP sharding plan for it; allowed with an FSDP launch: "
                                       r"mlp, gpt2"):
        distributed.check_fsdp(cfg, ["kl"])
    distributed.check_fsdp(mlp, ["kl"])
    gpt2 = SimpleNamespace(method=mlp.method, model=SimpleNamespace(name="gpt2", options={"lora_rank": 2}, settings={}),
                           amp="off")
    with pytest.raises(BadInput, match=r"^--lora-rank 2: LoRA .* is not sharded; allowed with an FSDP launch: 0"):
        distributed.check_fsdp(gpt2, ["kl"])
    gpt2.model.options, gpt2.model.settings = {"lora_rank": 0}, {"max_new_tokens": 8}
    with pytest.raises(BadInput, match=r"^--max-new-tokens / --lm-eval-tasks: generation and lm-eval run rank by rank"):
        distributed.check_fsdp(gpt2, ["kl"])
    gpt2.model.settings = {"max_new_tokens": 0, "lm_eval_tasks": []}
    distributed.check_fsdp(gpt2, ["kl"])


@pytest.mark.parametrize("n,batch,size,owed", [
    (41, 20, 2, [0, 1]),  # parts 21 and 20: two passes and one
    (40, 20, 2, [0, 0]),
    (3, 5, 4, [0, 0, 0, 0]),  # an empty part still runs one pass (the logits' width)
    (61, 20, 3, [0, 1, 1]),  # parts 21, 20, 20
])
def test_under_fsdp_every_rank_runs_as_many_evaluation_passes(n, batch, size, owed):
    """A forward of a sharded model is a collective: the ranks whose part of a test set needs fewer batches owe
    the difference (``Evaluator._logits`` runs them on one example)."""
    worlds = [World(rank=r, size=size, fsdp=True) for r in range(size)]
    assert [w.passes_owed(n, batch) for w in worlds] == owed
    passes = [max(1, -(-w.bounds(n)[1] // batch)) + w.passes_owed(n, batch) for w in worlds]
    assert len(set(passes)) == 1


def test_a_global_batch_that_does_not_split_is_refused():
    with pytest.raises(BadInput, match=r"--batch-size 30: not divisible by the 4 processes"):
        distributed.check(make_config(**MLP, method="naive"), 4)


def test_one_process_manifest_says_world_size_one_and_the_loop_calls_no_collective(tmp_path, monkeypatch):
    """One process pays nothing for the launcher path: no shard, no all-reduce of gradients or losses."""
    def collective(*_args, **_kw):
        raise AssertionError("a collective called on one process")

    for name in ("reduce_grads", "sum_floats", "shard"):
        monkeypatch.setattr(World, name, collective)
    rows = run_here({**MLP, "method": "kl"}, tmp_path)
    _, _, manifest = read_run(tmp_path / rows["run_id"].iloc[0])
    assert manifest["distributed"] == {"world_size": 1, "per_device_batch": 30, "global_batch": 30, "backend": None}


# --- launched: 2 CPU processes -------------------------------------------------------------------

def test_accelerate_launch_of_the_cli_gives_the_rows_of_one_process(tmp_path):
    """``accelerate launch -m forgetting.run``: kl with the teacher cache, 2 ranks, the rows of one process;
    rank 0 alone wrote the run (one run directory; the manifest says 2 ranks of 15)."""
    args = ["--benchmark", "split-digits", "--scenario", "class", "--method", "kl", "--epochs", "1", "--batch-size",
            "30", "--hidden", "32", "--dropout", "0", "--device", "cpu", "--quiet"]
    proc = launch(["-m", "forgetting.run", *args, "--results-dir", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = run_here({**MLP, "method": "kl"}, tmp_path / "one")
    two, manifest = launched_rows({**MLP, "method": "kl"}, tmp_path / "two")
    assert manifest["status"] == "complete"
    assert manifest["distributed"] == {"world_size": 2, "per_device_batch": 15, "global_batch": 30, "backend": "gloo"}
    assert [p.name for p in (tmp_path / "two").iterdir()] == [one["run_id"].iloc[0]]
    assert_same_rows(one, two)


@pytest.mark.parametrize("flags,needle,fsdp", [
    (["--method", "naive", "--batch-size", "31"], "--batch-size 31: not divisible by the 2 processes", False),
    (["--method", "der"], "--method der: der cannot run on 2 processes", False),
    (["--method", "ewc"], "--method ewc: ewc is not supported under FSDP", True),
])
def test_bad_values_under_a_launch_are_one_line_exit_2_on_every_rank(tmp_path, flags, needle, fsdp):
    """Both ranks started as a launcher starts them (its environment; ``--use_fsdp`` adds ACCELERATE_USE_FSDP),
    each on its own: a launcher stops the other ranks at the first exit, which would hide the second rank's answer."""
    env = {**os.environ, "ACCELERATE_USE_FSDP": str(fsdp).lower(), "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    cmd = [sys.executable, "-m", "forgetting.run", *flags, "--device", "cpu", "--quiet", "--results-dir",
           str(tmp_path / "r")]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT) for r in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err[-2000:]
        assert err.count("\n") == 1 and err.startswith("python -m forgetting.run: error: ") and needle in err, err
    assert not (tmp_path / "r").exists()


def test_methods_on_two_processes_give_the_rows_of_one_and_a_killed_rank_resumes(tmp_path, monkeypatch):
    """naive, kl without the cache (the live teacher on each rank's shard), ewc (the Fisher on every rank),
    replay (the same memory draws on every rank) and a causal LM with LoRA and kl: one launch, the rows of
    runs in this process; each rank evaluated its half of the test sets (the rows gathered).
    The same launch then runs kl whose rank 1 dies mid-task 2 (the launcher then stops rank 0): ``--resume``
    on 2 processes continues from the boundary of task 1 that rank 0 wrote, every rank restoring it, and ends
    with the rows of one process (one launch fewer than a test of its own)."""
    from test_lm import TINY, write_pairs

    pairs = write_pairs(tmp_path / "pairs.csv")
    lm = {"benchmark": "text-file", "model": "gpt2", "method": "kl", "epochs": 1, "batch_size": 8, "lr": 3e-3,
          "device": "cpu", "progress": False, **TINY, "gpt2_dropout": 0.0, "lora_rank": 2,
          "text_file": str(pairs), "prompt_column": "prompt", "response_column": "response", "max_seq_len": 40}
    runs = [{**MLP, "method": "naive"}, {**MLP, "method": "kl", "teacher_cache": False},
            {**MLP, "method": "ewc", "ewc_lambda": 100.0}, {**MLP, "method": "replay", "replay_size": 40}, lm]
    todo = tmp_path / "runs.json"
    launched = [{**r, "results_dir": str(tmp_path / "two")} for r in runs]
    launched[0]["_count_eval"] = str(tmp_path)  # naive: how many test examples each rank evaluated
    killed = {**MLP, "method": "kl"}  # last: its rank 1 dies in task 2 and the launch ends there (its own folder:
    launched.append({**killed, "results_dir": str(tmp_path / "cut"), "_kill": {"rank": 1, "task": 2}})  # the cache
    # is not in the run id, so in "two" it would be the complete run of kl without the cache
    todo.write_text(json.dumps(launched))
    proc = launch([str(ROOT / "tests" / "distributed_driver.py"), str(todo)])
    assert proc.returncode != 0, "rank 1 was to die in the last run"
    cut, manifest = launched_rows(killed, tmp_path / "cut")
    assert manifest["status"] != "complete" and manifest["completed_tasks"] == 2, proc.stderr[-3000:]
    from distributed_driver import count_eval
    from forgetting.evaluate import Evaluator

    monkeypatch.setattr(Evaluator, "_logits_of", Evaluator._logits_of)  # put back after the test
    seen = count_eval()
    for i, options in enumerate(runs):
        one = run_here(options, tmp_path / "one")
        if i == 0:
            evaluated = seen[0]  # the test examples one process's naive run evaluates
        two, manifest = launched_rows(options, tmp_path / "two")
        assert manifest["status"] == "complete" and manifest["distributed"]["world_size"] == 2, proc.stderr[-3000:]
        assert_same_rows(one, two)
    # the evaluation was sharded: each rank ran the model on half of them (parts differ by one per test set)
    parts = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert sum(parts) == evaluated and 0 <= parts[0] - parts[1] <= evaluated // 50, (parts, evaluated)
    todo.write_text(json.dumps([{**killed, "results_dir": str(tmp_path / "cut"), "_resume": True}]))
    proc = launch([str(ROOT / "tests" / "distributed_driver.py"), str(todo)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    two, manifest = launched_rows(killed, tmp_path / "cut")
    assert manifest["status"] == "complete" and manifest["resumed_at"]
    assert_same_rows(run_here(killed, tmp_path / "one-cut"), two)


def test_a_model_with_batchnorm_is_refused_on_several_processes():
    """BatchNorm's statistics are over each rank's shard, not the batch: refused (SyncBatchNorm is not wired in)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(BadInput, match=r"--model resnet: its BatchNorm2d normalises over each process's part"):
        distributed.check_model(model, 2, "resnet")
    distributed.check_model(model, 1, "resnet")
    distributed.check_model(torch.nn.Linear(2, 2), 2, "mlp")


@pytest.mark.slow  # two launches of 2 processes
def test_fsdp_launch_shards_the_model_and_gives_the_rows_of_one_process(tmp_path):
    """``accelerate launch --use_fsdp``: the live MLP sharded (FSDP2 on 2 CPU processes), naive (SGD), kl with and
    without the teacher cache, and a tiny GPT-2 (full fine-tuning, kl) sharded per block, the rows of one process; the references stay whole, bitwise unchanged while
    trained against, in eval mode, without gradients; a checkpoint is the file one process writes (the gathered
    weights); the live-teacher run's rank 1 is killed in task 2 and the run resumes sharded to the same rows. The
    cached kl run evaluates 41 examples per task in batches of 20: rank 1's part needs one pass fewer, which it
    owes (a sharded forward is a collective)."""
    from safetensors import safe_open

    # naive with SGD: its step is proportional to the gradient (Adam's hardly sees FSDP's default mean over ranks)
    naive = {**MLP, "method": "naive", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9}
    kl = {**MLP, "method": "kl", "eval_subset": 41, "eval_batch_size": 20}
    live = {**MLP, "method": "kl", "teacher_cache": False}
    from test_lm import TINY, write_pairs

    lm = {"benchmark": "text-file", "model": "gpt2", "method": "kl", "epochs": 1, "batch_size": 8, "lr": 3e-3,
          "device": "cpu", "progress": False, **TINY, "gpt2_dropout": 0.0, "eval_batch_size": 5,
          "text_file": str(write_pairs(tmp_path / "pairs.csv")), "prompt_column": "prompt",
          "response_column": "response", "max_seq_len": 40}
    runs = [(naive, "naive"), (kl, "kl"), (lm, "lm")]
    todo = tmp_path / "runs.json"
    todo.write_text(json.dumps([{**naive, "results_dir": str(tmp_path / "two_naive"), "_check_refs": str(tmp_path)},
                                {**kl, "results_dir": str(tmp_path / "two_kl")},
                                {**lm, "results_dir": str(tmp_path / "two_lm")},
                                {**live, "results_dir": str(tmp_path / "two_live"), "_kill": {"rank": 1, "task": 2}}]))
    proc = launch([str(ROOT / "tests" / "distributed_driver.py"), str(todo)], fsdp=True)
    assert proc.returncode != 0  # the last run's rank 1 died
    cut, manifest = launched_rows(live, tmp_path / "two_live")
    assert manifest["status"] != "complete" and manifest["completed_tasks"] == 2
    todo.write_text(json.dumps([{**live, "results_dir": str(tmp_path / "two_live"), "_resume": True}]))
    proc = launch([str(ROOT / "tests" / "distributed_driver.py"), str(todo)], fsdp=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in range(2):
        found = json.loads((tmp_path / f"refs{r}.json").read_text())
        assert found == {"boundaries": 5, "checked": 8, "unchanged": True, "eval": True, "no_grad": True,
                         "whole": True, "live_sharded": True}, (r, found)
    for options, name in [*runs, (live, "live")]:
        one = run_here(options, tmp_path / f"one_{name}")
        two, manifest = launched_rows(options, tmp_path / f"two_{name}")
        assert manifest["status"] == "complete"
        assert manifest["distributed"] == {"world_size": 2, "per_device_batch": options["batch_size"] // 2,
                                           "global_batch": options["batch_size"], "backend": "gloo",
                                           "sharding": "fsdp2"}
        assert_same_rows(one, two)
        assert abs(one["weight_change"] - two["weight_change"]).max() <= 1e-5
    assert manifest["resumed_at"]
    # the checkpoint: the one-process file's tensors (names, shapes, dtypes, metadata), values within tolerance
    paths = [d / make_config(**naive).run_id / "checkpoints" / "task_1.safetensors"
             for d in (tmp_path / "one_naive", tmp_path / "two_naive")]
    with safe_open(str(paths[0]), "pt") as a, safe_open(str(paths[1]), "pt") as b:
        assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            x, y = a.get_tensor(k), b.get_tensor(k)
            assert x.dtype == y.dtype and x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-5), k
