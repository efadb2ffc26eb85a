"""The teacher cache is exact: same outputs as the live teacher, same results, off where it would not be."""

import logging

import numpy as np
import pytest
import torch

from forgetting.config import RunConfig
from forgetting.registry import make_config
from forgetting.registry import build_methods
from forgetting.metrics import run_summary
from forgetting.models.mlp import MLP
from forgetting.run import run_experiment
from forgetting.streams import build_stream, iterate_batches
from forgetting.train import Trainer

HP = {"kl_lambda": 1.0, "kl_direction": "forward", "temperature": 2.0}


def trainer_after_task0(scenario="domain", benchmark="split-digits", options=None, **hp):
    config = make_config(benchmark=benchmark, scenario=scenario, epochs=1, progress=False, hparams={**HP, **hp})
    stream = build_stream(benchmark, scenario, options or {})
    torch.manual_seed(0)
    model = MLP(stream.input_shape, stream.layout.n_outputs, hidden=[64], dropout=0.3)
    tr = Trainer(config, stream, model, build_methods("kl", config.hparams), torch.device("cpu"))
    tr.train_task(0)
    return tr


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_cached_teacher_outputs_equal_live_ones(scenario):
    tr = trainer_after_task0(scenario)
    kl = tr.methods[0]
    kl.before_task(tr, 1)
    assert kl.cache is not None and kl.cache.outputs.shape == (len(tr.stream.tasks[1].train), tr.layout.n_outputs)
    for batch in iterate_batches(tr.stream.tasks[1].train, 1, 32, shuffle=True, generator=torch.Generator().manual_seed(1)):
        cached = kl.teacher_logits(tr, batch)
        with torch.no_grad():
            live = tr.previous_model(batch.inputs)
        assert torch.allclose(cached, live, atol=1e-5, rtol=0)
        # and the penalty computed from it matches the live one
        logits = tr.model(batch.inputs)
        with_cache = kl.penalties(tr, batch, logits, 1)["kl"][0]
        kl_cache, kl.cache = kl.cache, None
        without = kl.penalties(tr, batch, logits, 1)["kl"][0]
        kl.cache = kl_cache
        assert float(with_cache) == pytest.approx(float(without), abs=1e-5)


def test_replayed_examples_fall_back_to_the_live_teacher():
    tr = trainer_after_task0()
    kl = tr.methods[0]
    kl.before_task(tr, 1)
    batch = next(iterate_batches(tr.stream.tasks[0].train, 0, 16, shuffle=False))  # task-0 examples
    with torch.no_grad():
        live = tr.previous_model(batch.inputs)
    assert torch.equal(kl.teacher_logits(tr, batch), live)


def test_cache_off_for_changing_inputs_with_a_log_line(caplog):
    tr = trainer_after_task0()
    tr.stream.deterministic_inputs = False
    with caplog.at_level(logging.INFO, logger="forgetting"):
        tr.methods[0].before_task(tr, 1)
    assert tr.methods[0].cache is None
    assert "teacher cache off" in caplog.text and "augmentation" in caplog.text


def test_cache_off_above_its_size_limit(caplog):
    tr = trainer_after_task0(teacher_cache_mb=0.001)
    with caplog.at_level(logging.INFO, logger="forgetting"):
        tr.methods[0].before_task(tr, 1)
    assert tr.methods[0].cache is None and "above --teacher-cache-mb" in caplog.text


def test_cache_off_by_flag():
    tr = trainer_after_task0(teacher_cache=False)
    tr.methods[0].before_task(tr, 1)
    assert tr.methods[0].cache is None


@pytest.mark.slow
def test_runs_with_and_without_cache_end_alike(tmp_path, mnist_dir):
    def final_acc(cache, seed):
        cfg = make_config(benchmark="split-mnist", scenario="domain", epochs=1, seed=seed, data_dir=str(mnist_dir),
                        model_options={"hidden": [100], "dropout": 0.2}, results_dir=str(tmp_path), progress=False,
                        hparams={**HP, "teacher_cache": cache})
        _, rows, _ = run_experiment(cfg)
        return run_summary(rows)["average_accuracy"]

    seeds = [0, 1, 2]
    with_cache = np.mean([final_acc(True, s) for s in seeds])
    without = np.mean([final_acc(False, s) for s in seeds])
    assert abs(with_cache - without) <= 0.005, (with_cache, without)


def test_replay_kl_holds_only_the_new_examples_and_serves_them_from_the_cache():
    from forgetting.penalty import kl_penalty

    config = make_config(benchmark="split-digits", scenario="domain", method="replay+kl", epochs=1, progress=False,
                         hparams={**HP, "replay_size": 60})
    hp = config.hparams
    stream = build_stream("split-digits", "domain", {})
    torch.manual_seed(0)
    model = MLP(stream.input_shape, stream.layout.n_outputs, hidden=[64], dropout=0.0)
    tr = Trainer(config, stream, model, build_methods("replay+kl", hp), torch.device("cpu"))
    tr.train_task(0)
    replay, kl = tr.methods
    tr.current_task = 1
    for m in tr.methods:
        m.before_task(tr, 1)
    assert kl.cache is not None
    with torch.no_grad():  # the student drifts from the teacher
        for p in tr.model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = next(iter(replay.batches(tr, 1, 1)))
    new = batch.task_ids == 1
    assert 0 < int(new.sum()) < len(batch)  # new and replayed examples in one batch
    calls = []
    hook = tr.previous_model.register_forward_hook(lambda *args: calls.append(1))
    logits = tr.model(batch.inputs)
    value = float(kl.penalties(tr, batch, logits, 1)["kl"][0])
    hook.remove()
    assert calls == []  # the teacher was not run: its outputs on the new examples came from the cache
    with torch.no_grad():
        teacher = tr.previous_model(batch.inputs)
    on_new = float(kl_penalty(logits[new], teacher[new], direction="forward", temperature=2.0))
    on_all = float(kl_penalty(logits, teacher, direction="forward", temperature=2.0))
    assert value == pytest.approx(on_new, abs=1e-6) and abs(on_new - on_all) > 1e-4
    kl.hparams["kl_on_replayed"] = True  # every example of the batch held, the live teacher on all of them
    assert float(kl.penalties(tr, batch, logits, 1)["kl"][0]) == pytest.approx(on_all, abs=1e-6)


def test_in_order_batches_are_views_only_where_laid_out_as_the_copies():
    """``views=True`` (evaluation, the teacher cache): a batch shares the data's memory where it starts on a 64-byte
    boundary as a gathered copy does, else it is the copy; shuffled or subset batches are always copies."""
    from forgetting.streams.base import TensorData, iterate_batches

    x, y = torch.randn(10, 3, 4), torch.arange(10)  # a row is 48 bytes: rows 0, 4, 8 start on 64-byte boundaries
    data = TensorData(x, y)
    aligned = x.data_ptr() % 64 == 0
    for size, viewed in ((4, [aligned] * 3), (3, [aligned, False, False, False])):
        views = list(iterate_batches(data, 2, size, shuffle=False, views=True))
        copies = list(iterate_batches(data, 2, size, shuffle=False))
        assert [v.inputs.data_ptr() == x[size * i].data_ptr() for i, v in enumerate(views)] == viewed
        for v, c in zip(views, copies, strict=True):
            assert torch.equal(v.inputs, c.inputs) and torch.equal(v.targets, c.targets)
            assert torch.equal(v.index, c.index) and torch.equal(v.task_ids, c.task_ids)
    shared = lambda batches: any(b.inputs.data_ptr() == x[int(b.index[0])].data_ptr() for b in batches)  # noqa: E731
    assert not shared(iterate_batches(data, 0, 4, shuffle=True, generator=torch.Generator().manual_seed(0),
                                      views=True))
    assert not shared(iterate_batches(data, 0, 4, shuffle=False, index=torch.arange(8), views=True))
    columns = TensorData(x.transpose(1, 2), y)  # not contiguous: copies
    assert all(b.inputs.data_ptr() != columns.inputs[int(b.index[0])].data_ptr()
               for b in iterate_batches(columns, 0, 4, shuffle=False, views=True))


def test_the_size_limit_is_examples_times_outputs_times_4_bytes_inclusive(caplog):
    """On at exactly the cache's size in MB (rows x outputs x 4 / 2^20), off just below it; each said in a log line."""
    tr = trainer_after_task0()
    kl = tr.methods[0]
    rows, n = len(tr.stream.tasks[1].train), tr.layout.n_outputs
    size_mb = rows * n * 4 / 2**20
    kl.hparams["teacher_cache_mb"] = size_mb
    with caplog.at_level(logging.INFO, logger="forgetting"):
        kl.before_task(tr, 1)
        assert kl.cache is not None
        below = float(np.nextafter(size_mb, 0.0))
        kl.hparams["teacher_cache_mb"] = below
        kl.before_task(tr, 1)
        assert kl.cache is None
    assert [r.getMessage() for r in caplog.records] == [
        f"teacher cache for task 1: {rows} examples x {n} outputs ({size_mb:.2f} MB)",
        f"teacher cache off for task 1: it would take {size_mb:.1f} MB, above --teacher-cache-mb {below:g}; "
        "using the live teacher"]


def test_teacher_logits_of_some_rows_come_from_the_cache_without_running_the_teacher():
    tr = trainer_after_task0()
    kl = tr.methods[0]
    kl.before_task(tr, 1)
    batch = next(iterate_batches(tr.stream.tasks[1].train, 1, 8, shuffle=False))
    with torch.no_grad():
        live = tr.previous_model(batch.inputs)
    rows = torch.tensor([5, 0, 2])
    calls = []
    hook = tr.previous_model.register_forward_hook(lambda *args: calls.append(1))
    try:
        cached = kl.teacher_logits(tr, batch, rows)
        assert calls == [] and cached.shape == (3, tr.layout.n_outputs)
        assert torch.allclose(cached, live[rows], atol=1e-5, rtol=0)
        kl.cache = None
        assert torch.equal(kl.teacher_logits(tr, batch, rows), live[rows]) and calls == [1]
    finally:
        hook.remove()


def test_why_the_cache_is_off_and_the_live_teacher_refused_in_train_mode():
    from types import SimpleNamespace

    from forgetting.methods.kl import Method as KL

    def trainer(deterministic, training):
        return SimpleNamespace(stream=SimpleNamespace(deterministic_inputs=deterministic),
                               previous_model=SimpleNamespace(training=training))

    assert KL.cache_blocker(trainer(True, False)) is None
    assert KL.cache_blocker(trainer(False, False)) == "the stream's training inputs change between visits (augmentation)"
    assert KL.cache_blocker(trainer(True, True)) == "the teacher is in train mode (stochastic)"
    with pytest.raises(AssertionError, match="^the teacher must be in eval mode$"):
        KL.live_teacher(trainer(True, True))
