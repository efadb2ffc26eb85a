"""The loop's small pieces by themselves (``train.Trainer``): the base kept without training, the preview batches'
order, the hooks into an FSDP sharding, the weight change where nothing is shared, the untrained model's row."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from forgetting.methods.base import Method
from forgetting.preparing import prepare
from forgetting.registry import make_config
from forgetting.train import Trainer


class Hooks(Method):
    """Records the hooks it is called with: (hook, trainer, task)."""

    name = "hooks"

    def __init__(self):
        super().__init__()
        self.calls = []

    def before_task(self, trainer, task):
        self.calls.append(("before", trainer, task))

    def after_task(self, trainer, task):
        self.calls.append(("after", trainer, task))


class Recorder:
    def __init__(self):
        self.rows, self.done, self.losses, self.steps = [], [], [], []

    def elapsed(self):
        return 1.5

    def add_rows(self, rows):
        self.rows += rows

    def add_losses(self, step, parts):
        self.steps.append(step)
        self.losses.append(parts["loss"])

    def task_done(self, trainer, task):
        self.done.append((trainer, task))


def _trainer(tmp_path, **options):
    options = {"epochs": 1, "progress": False, **options}
    config = make_config(method="naive", results_dir=str(tmp_path), **options)
    device, stream, model, _ = prepare(config)
    hooks = Hooks()
    return Trainer(config, stream, model, [hooks], device, recorder=Recorder()), hooks


def test_a_base_kept_without_training_is_task_0s_boundary_for_every_hook(tmp_path):
    trainer, hooks = _trainer(tmp_path, train_base=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.current_task = 5  # whatever it was: the kept base is task 0's
    trainer.train_task(0)
    assert trainer.current_task == 0 and trainer.global_step == 0
    assert hooks.calls == [("before", trainer, 0), ("after", trainer, 0)]
    assert trainer.recorder.done == [(trainer, 0)]
    rows = trainer.recorder.rows
    assert rows and {(r["phase"], r["trained_task"], r["epoch"]) for r in rows} == {("epoch", 0, 1)}
    assert all(math.isnan(r["train_loss"]) for r in rows)
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())  # not a step taken
    assert trainer.base_model is not None and trainer.previous_model is not None


def test_the_untrained_models_rows_are_epoch_0_with_no_training_loss(tmp_path):
    trainer, _ = _trainer(tmp_path)
    trainer.train_task = lambda t: None  # only the init evaluation
    trainer.fit()
    rows = trainer.recorder.rows
    assert rows and all(r["phase"] == "init" and r["trained_task"] == -1 and r["epoch"] == 0 for r in rows)
    assert all(math.isnan(r["train_loss"]) for r in rows)


def test_preview_batches_shuffle_with_the_runs_generator(tmp_path):
    # --base-preview N: the N examples of task 1 are a fixed draw (PREVIEW_SEED), the order of the joined examples is
    # the run's own generator's (seeded by --seed), which it advances like any epoch's shuffle
    trainer, _ = _trainer(tmp_path, base_preview=5, seed=3)
    first = trainer.stream.tasks[0].train
    n = len(first) + 5
    torch.manual_seed(12345)  # the global generator plays no part
    batches = list(trainer.preview_batches())
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    size = trainer.config.batch_size
    assert len(batches) == math.ceil(n / size)
    for start, batch in zip(range(0, n, size), batches):  # each batch the next slice of the order (as a set)
        sel = order[start : start + size]
        assert int((batch.task_ids == 1).sum()) == int((sel >= len(first)).sum())
        assert sorted(batch.index[batch.task_ids == 0].tolist()) == sorted(sel[sel < len(first)].tolist())
    advanced = torch.Generator().manual_seed(3)
    torch.randperm(n, generator=advanced)
    assert torch.equal(trainer.generator.get_state(), advanced.get_state())


class Sharding:
    """Stands for ``fsdp.Sharding``: records what the trainer hands it."""

    def __init__(self):
        self.calls = []
        self.template = torch.nn.Linear(1, 1)

    def gather(self):
        self.calls.append("gather")
        return {"gathered": True}

    def whole(self, weights):
        self.calls.append(("whole", weights))
        return "whole model"

    def load(self, weights):
        self.calls.append(("load", weights))


def test_under_fsdp_references_and_checkpoints_go_through_the_sharding(tmp_path):
    trainer, _ = _trainer(tmp_path)
    trainer.sharding = sharding = Sharding()
    assert trainer.whole_model() == "whole model"
    assert sharding.calls == ["gather", ("whole", {"gathered": True})]
    sharding.calls.clear()
    assert trainer.whole_model({"read": 1}) == "whole model"  # weights read at a resume: no gather
    assert sharding.calls == [("whole", {"read": 1})]
    sharding.calls.clear()
    trainer.load_weights({"w": 2})
    assert sharding.calls == [("load", {"w": 2})]
    assert trainer.whole_state_dict().keys() == sharding.template.state_dict().keys()


def test_weight_change_is_nan_where_the_model_and_its_base_share_no_parameter():
    fake = SimpleNamespace(model=torch.nn.Linear(2, 2), base_model=torch.nn.Linear(3, 3))  # other shapes
    assert math.isnan(Trainer.weight_change(fake))
    fake.base_model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        fake.base_model.weight.copy_(fake.model.weight + 3.0)
        fake.base_model.bias.copy_(fake.model.bias - 4.0)
    assert Trainer.weight_change(fake) == pytest.approx(math.sqrt(4 * 9.0 + 2 * 16.0), rel=1e-6)


def test_the_progress_bar_counts_every_step_of_the_task_and_shows_only_when_asked(tmp_path, monkeypatch):
    import forgetting.train as train

    bars, updates = [], []

    class Bar:
        def __init__(self, total, desc, enabled):
            bars.append((total, desc, enabled))

        def update(self, n=1):
            updates.append(("update", n))

        def set_postfix(self, **kw):
            updates.append(("postfix", kw))

        def close(self):
            pass

    monkeypatch.setattr(train.progress, "bar", Bar)
    for shown in (True, False):
        trainer, _ = _trainer(tmp_path / str(shown), epochs=2, progress=shown)
        trainer.train_task(0)
        task = trainer.stream.tasks[0]
        steps = math.ceil(len(task.train) / trainer.config.batch_size)
        assert bars.pop() == (2 * steps, f"task 0 {task.name}", shown)
        if shown:  # a step advances the bar by one and shows its loss, left for the bar's own refresh
            losses = trainer.recorder.losses
            assert updates == [u for loss in losses for u in (("update", 1),
                                                                ("postfix", {"loss": f"{loss:.3f}", "refresh": False}))]
        else:
            assert updates == []
        updates.clear()


@pytest.mark.parametrize("batch_size", [32, 10_000])  # several steps an epoch, and one
def test_an_epochs_row_carries_the_mean_of_its_steps_losses(tmp_path, batch_size):
    trainer, _ = _trainer(tmp_path, epochs=2, batch_size=batch_size)
    trainer.train_task(0)
    steps = math.ceil(len(trainer.stream.tasks[0].train) / trainer.config.batch_size)
    losses = trainer.recorder.losses
    assert len(losses) == 2 * steps and trainer.recorder.steps == list(range(1, 2 * steps + 1))  # after each step
    for epoch in (1, 2):
        row = next(r for r in trainer.recorder.rows if r["phase"] == "epoch" and r["epoch"] == epoch)
        assert row["train_loss"] == pytest.approx(sum(losses[(epoch - 1) * steps : epoch * steps]) / steps, rel=1e-12)


def test_the_preview_joins_task_0_only(tmp_path):
    # --base-preview 5: task 0 trains on its examples and 5 of task 1's; task 1 then on its own examples alone
    trainer, _ = _trainer(tmp_path, base_preview=5)
    seen = []
    trainer.step = lambda batch, t, epoch: seen.append((t, batch.task_ids.clone())) or {"loss": 0.0}
    trainer.train_task(0)
    trainer.train_task(1)
    ids = {t: torch.cat([b for task, b in seen if task == t]) for t in (0, 1)}
    tasks = trainer.stream.tasks
    assert int((ids[0] == 0).sum()) == len(tasks[0].train) and int((ids[0] == 1).sum()) == 5
    assert len(ids[1]) == len(tasks[1].train) and bool((ids[1] == 1).all())


def test_step_rows_carry_the_running_mean_of_the_epochs_losses(tmp_path):
    trainer, _ = _trainer(tmp_path, epochs=1, eval_every=2)
    trainer.train_task(0)
    losses, rows = trainer.recorder.losses, trainer.recorder.rows
    steps = [r for r in rows if r["phase"] == "step"]
    assert steps and {r["global_step"] for r in steps} == set(range(2, len(losses) + 1, 2))
    for r in steps:
        k = r["global_step"]
        assert r["train_loss"] == pytest.approx(sum(losses[:k]) / k, rel=1e-12)


def test_rows_are_evaluated_against_the_base_for_the_trained_task(tmp_path):
    trainer, _ = _trainer(tmp_path, scenario="class")
    trainer.train_task(0)
    rows = trainer.record("step", 0, 1, 0.0)
    direct = trainer.evaluator.evaluate(trainer.model, trainer.base_model, trained_task=0)
    assert [r["accuracy"] for r in rows] == [r["accuracy"] for r in direct]
    assert all(r["kl_base"] == 0.0 for r in rows)  # the model is its base: no drift, and measured (not NaN)


def _stopping(tmp_path, accuracies, **options):
    """A trainer whose evaluations of task 1 read ``accuracies`` in turn (task 1's own row), for --stop-at-accuracy."""
    trainer, hooks = _trainer(tmp_path, stop_at_accuracy=0.5, **options)
    trainer.train_task(0)
    evaluate, queue = trainer.evaluator.evaluate, list(accuracies)

    def scripted(model, base, trained_task=None):
        rows = evaluate(model, base, trained_task=trained_task)
        if trained_task == 1:
            acc = queue.pop(0)
            rows = [{**r, "accuracy": acc} if r["eval_task"] == 1 else r for r in rows]
        return rows

    trainer.evaluator.evaluate = scripted
    trainer.recorder.rows.clear()
    hooks.calls.clear()
    trainer.recorder.done.clear()
    return trainer, hooks


def test_a_stop_at_a_step_ends_the_task_there_as_its_boundary(tmp_path):
    trainer, hooks = _stopping(tmp_path, [0.2, 0.9, 0.1, 0.1], epochs=3, eval_every=1)
    trainer.train_task(1)
    rows = trainer.recorder.rows
    assert trainer.global_step - trainer._task_start_step == 2  # the second evaluation reached 0.5
    assert [r["phase"] for r in rows if r["eval_task"] == 1] == ["step", "epoch"]  # no row after the stop
    assert trainer.stops[1] == {"reached": True, "phase": "step", "epoch": 1, "global_step": trainer.global_step,
                                "steps": 2, "accuracy": 0.9}
    assert hooks.calls == [("before", trainer, 1), ("after", trainer, 1)] and trainer.recorder.done == [(trainer, 1)]


def test_a_stop_at_an_epochs_end_still_closes_the_task(tmp_path):
    trainer, hooks = _stopping(tmp_path, [0.7, 0.1, 0.1], epochs=3)
    trainer.train_task(1)
    assert [r["epoch"] for r in trainer.recorder.rows if r["eval_task"] == 1] == [1]
    steps = math.ceil(len(trainer.stream.tasks[1].train) / trainer.config.batch_size)
    assert trainer.global_step - trainer._task_start_step == steps == trainer.stops[1]["steps"]  # no step after it
    assert trainer.stops[1]["reached"] and trainer.stops[1]["phase"] == "epoch"
    assert hooks.calls[-1] == ("after", trainer, 1) and trainer.recorder.done == [(trainer, 1)]


def test_check_stop_keeps_the_last_epoch_below_the_target_and_reads_no_accuracy_as_nan(tmp_path):
    trainer, _ = _trainer(tmp_path, stop_at_accuracy=0.5)
    assert trainer.check_stop([{"eval_task": 1, "accuracy": 0.3}], "step", 1, 1) is False
    assert 1 not in trainer.stops  # a step below the target leaves no mark
    assert trainer.check_stop([{"eval_task": 1, "accuracy": 0.3}], "epoch", 1, 1) is False
    assert trainer.stops[1]["reached"] is False and trainer.stops[1]["phase"] == "epoch"
    assert trainer.check_stop([{"eval_task": 1, "nll": 2.0}], "epoch", 1, 2) is False  # no accuracy: never reached
    assert math.isnan(trainer.stops[1]["accuracy"]) and trainer.stops[1]["epoch"] == 2


def test_rows_carry_the_weight_change_once_there_is_a_base(tmp_path):
    trainer, _ = _trainer(tmp_path)
    init = trainer.record("init", -1, 0, float("nan"))
    assert init and all("weight_change" not in r for r in init)  # no base yet
    trainer.train_task(0)
    with torch.no_grad():
        next(trainer.model.parameters()).add_(0.5)
    rows = trainer.record("step", 1, 1, 0.0)
    assert rows and all(r["weight_change"] == trainer.weight_change() > 0 for r in rows)


@pytest.mark.parametrize("every", [False, True, None])  # None: an evaluator without the attribute
def test_boundary_rows_join_the_rows_at_task_ends_or_at_every_evaluation(tmp_path, every):
    # an evaluator with rows of its own (lm-eval's tasks): at the untrained model, at each task's last epoch and at
    # a stop; at the other evaluations only when it asks for every evaluation (--lm-eval-at evaluations)
    trainer, _ = _trainer(tmp_path, epochs=2)
    seen = []
    trainer.evaluator.boundary_rows = lambda model: seen.append(model) or [{"eval_task": 99, "extra": 1.0}]
    if every is not None:
        trainer.evaluator.rows_at_every_evaluation = every
    else:
        assert not hasattr(trainer.evaluator, "rows_at_every_evaluation")

    def extra(phase, epoch, stop=False):
        trainer.check_stop = lambda rows, phase, t, epoch: stop
        return [r for r in trainer.record(phase, 0, epoch, 0.0) if r["eval_task"] == 99]

    assert len(extra("init", 0)) == 1 and len(extra("epoch", 2)) == 1 and len(extra("step", 2, stop=True)) == 1
    assert len(extra("epoch", 1)) == len(extra("step", 1)) == int(bool(every))
    assert seen and all(m is trainer.model for m in seen)


def test_rows_name_the_run_and_flag_the_tasks_measured_but_never_learned(tmp_path):
    trainer, _ = _trainer(tmp_path, learn_tasks=2, seed=4)
    n = len(trainer.stream)
    trainer.evaluator.boundary_rows = lambda model: [{"eval_task": n, "extra": 1.0}]  # past the stream: not flagged
    rows = trainer.record("init", -1, 0, float("nan"))
    config = trainer.config
    for r in rows:
        assert (r["run_id"], r["benchmark"], r["scenario"], r["method"], r["lambda"], r["seed"]) == (
            config.run_id, trainer.stream.name, trainer.stream.scenario, "hooks", 0.0, 4)
        assert (r["phase"], r["trained_task"], r["epoch"], r["global_step"], r["wall_time"]) == ("init", -1, 0, 0, 1.5)
        assert math.isnan(r["train_loss"])
    assert trainer.recorder.rows == rows
    assert sorted(r["eval_task"] for r in rows if r.get("eval_only")) == list(range(2, n))
    assert all(r.get("eval_only", 0) == (1 if 2 <= r["eval_task"] < n else 0) for r in rows)


def _one_batch(trainer, task):
    from forgetting.streams.base import iterate_batches

    return next(iter(iterate_batches(trainer.stream.tasks[task].train, task, 8, shuffle=False)))


def test_a_step_trains_in_train_mode_whatever_mode_it_finds(tmp_path):
    trainer, _ = _trainer(tmp_path)
    trainer.optimizer = trainer.new_optimizer()
    trainer.model.eval()  # as an evaluation or a hook may leave it
    trainer.step(_one_batch(trainer, 0), 0, 1)
    assert trainer.model.training and trainer.global_step == 1


def test_pg_and_oracle_sft_take_the_fine_tuning_tasks_only(tmp_path, monkeypatch):
    import forgetting.train as train

    trainer, _ = _trainer(tmp_path)
    trainer.optimizer = trainer.new_optimizer()
    calls = []

    def pg(tr, batch):
        calls.append(("pg", tr, batch))
        logits = tr.model(batch.inputs)
        return logits, logits.sum() * 0.0 + 0.5, {"reward_mean": 0.25}

    monkeypatch.setattr(train, "pg_task_loss", pg)
    trainer.config.loop["objective"] = "pg"
    for t in (0, 1):
        batch = _one_batch(trainer, t)
        parts = trainer.step(batch, t, 1)
        assert (parts.get("reward_mean"), parts["data_loss"] == 0.5) == ((0.25, True) if t else (None, False))
        assert calls == ([("pg", trainer, batch)] if t else [])
    trainer.config.loop["objective"] = "sft"
    trainer.config.loop["sft_targets"] = "oracle"
    oracle = []
    trainer.objective.oracle_loss = lambda logits, batch, t, ref, stream: oracle.append(t) or logits.sum() * 0.0 + 0.75
    for t in (0, 1):
        parts = trainer.step(_one_batch(trainer, t), t, 1)
        assert (parts["data_loss"] == 0.75) == bool(t)
    assert oracle == [1]


def test_fine_tuning_tasks_get_their_own_learning_rate(tmp_path):
    trainer, _ = _trainer(tmp_path, finetune_lr=0.123)
    assert trainer.new_optimizer().param_groups[0]["lr"] == trainer.config.lr != 0.123
    trainer.current_task = 1
    assert trainer.new_optimizer().param_groups[0]["lr"] == 0.123


def test_a_steps_parts_are_its_total_its_data_loss_and_each_term(tmp_path):
    trainer, hooks = _trainer(tmp_path)
    trainer.optimizer = trainer.new_optimizer()
    hooks.penalties = lambda tr, batch, logits, t: {"extra": (logits.sum() * 0.0 + 2.0, 0.5)}
    parts = trainer.step(_one_batch(trainer, 0), 0, 1)
    assert parts["extra"] == 2.0 and parts["loss"] == pytest.approx(parts["data_loss"] + 1.0, rel=1e-6)


def test_a_distributed_step_reports_the_sum_over_the_ranks_of_each_ranks_share(tmp_path):
    # a stand-in world of two ranks holding the same shard: every part is summed, each rank's weighted by its share
    trainer, _ = _trainer(tmp_path)
    trainer.optimizer = trainer.new_optimizer()
    batch = _one_batch(trainer, 0)
    torch.manual_seed(0)  # the same dropout masks here and in the step
    with torch.no_grad():  # the loss of this rank's half before the step
        half_loss = float(trainer._loss_method.task_loss(trainer, take_half(batch))[1])
    sent = []
    trainer.world = SimpleNamespace(distributed=True, main=True, shard=lambda b: take_half(b),
                                    sum_floats=lambda xs, device: sent.append(list(xs)) or [2 * x for x in xs],
                                    reduce_grads=lambda params: None)
    torch.manual_seed(0)
    parts = trainer.step(batch, 0, 1)
    (shared,) = sent
    assert set(parts) == {"loss", "data_loss"} and parts["loss"] == 2 * shared[0]
    assert shared[0] == pytest.approx(0.5 * half_loss, rel=1e-6)  # the rank's half of the batch, weighted 1/2


def take_half(batch):
    from forgetting.distributed import take

    return take(batch, torch.arange(len(batch) // 2))


class _Both(Hooks):
    """Changes the task loss and the batches: the loop must use it whatever its place among the methods."""

    name = "both"
    changes_task_loss = True
    changes_batches = True

    def task_loss(self, trainer, batch):
        logits = trainer.model(batch.inputs)
        return logits, logits.sum() * 0.0 + 0.75, {}

    def batches(self, trainer, task, epoch):
        yield _one_batch(trainer, task)


def test_the_method_that_changes_the_loss_or_the_batches_is_used_wherever_it_is_listed(tmp_path):
    config = make_config(method="naive", results_dir=str(tmp_path), epochs=2, progress=False)
    device, stream, model, _ = prepare(config)
    both = _Both()
    trainer = Trainer(config, stream, model, [Hooks(), both], device, recorder=Recorder())
    assert trainer.method_name == "hooks+both"
    trainer.train_task(0)
    assert trainer.global_step == 2  # its one batch per epoch, not the task's batches
    assert trainer.recorder.losses == [0.75, 0.75]  # its task loss


def test_hooks_see_the_documented_state_the_task_its_gradients_and_its_update(tmp_path):
    trainer, hooks = _trainer(tmp_path)
    seen = {}

    def before_task(tr, task):
        seen.setdefault("before", (task, tr.previous_model, tr.base_model, tr.optimizer is not None))

    def after_backward(tr, task):
        seen["after_backward"] = (task, all(p.grad is not None for p in tr.model.parameters()),
                                  [p.detach().clone() for p in tr.model.parameters()])

    def after_step(tr, task):
        before = seen["after_backward"][2]
        seen["after_step"] = (task, any(not torch.equal(p, q) for p, q in zip(tr.model.parameters(), before)))

    hooks.before_task, hooks.after_backward, hooks.after_step = before_task, after_backward, after_step
    trainer.train_task(0)
    assert seen["before"] == (0, None, None, True)  # no reference yet at task 0 (methods/base.py)
    trainer.optimizer = trainer.new_optimizer()
    trainer.step(_one_batch(trainer, 1), 1, 1)
    assert seen["after_backward"][:2] == (1, True) and seen["after_step"] == (1, True)


def test_a_non_finite_loss_stops_the_run_saying_where(tmp_path):
    from forgetting.errors import RunFailed

    trainer, hooks = _trainer(tmp_path)
    trainer.optimizer = trainer.new_optimizer()
    trainer.global_step = 6
    hooks.penalties = lambda tr, batch, logits, t: {"bad": (logits.sum() * float("nan"), 1.0)}
    with pytest.raises(RunFailed) as failed:
        trainer.step(_one_batch(trainer, 1), 1, 3)
    name = trainer.stream.tasks[1].name
    assert str(failed.value) == f"non-finite loss (nan) at task 1 ({name}), epoch 3, step 7"
    where = failed.value.where
    assert set(where) == {"task", "epoch", "step", "loss"}
    assert (where["task"], where["epoch"], where["step"]) == (1, 3, 7)
    assert math.isnan(where["loss"]) and trainer.global_step == 6


def test_mixed_precision_on_the_cpu_is_refused_naming_the_device(tmp_path):
    from forgetting.errors import BadInput

    config = make_config(method="naive", results_dir=str(tmp_path), epochs=1, progress=False, amp="bf16")
    device, stream, model, _ = prepare(config)
    with pytest.raises(BadInput, match="--amp bf16: mixed precision runs on CUDA only; on cpu use --amp off"):
        Trainer(config, stream, model, [Hooks()], device)


def test_the_evaluation_subset_reaches_the_evaluator(tmp_path):
    trainer, _ = _trainer(tmp_path, eval_subset=5)
    assert [len(i) for i in trainer.evaluator.index] == [5] * len(trainer.stream.tasks)


def _world(shard, reduced, **kw):
    return SimpleNamespace(distributed=True, main=True, shard=shard, sum_floats=lambda xs, device: list(xs),
                           reduce_grads=lambda params: reduced.append(
                               (list(params), [p.grad.clone() for p in params])), **kw)


def test_a_distributed_steps_gradient_is_its_share_and_is_summed_over_ranks_only_without_fsdp(tmp_path):
    trainer, _ = _trainer(tmp_path)
    batch = _one_batch(trainer, 0)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    torch.manual_seed(0)  # the same dropout masks here and in the step
    trainer.model.zero_grad()
    trainer._loss_method.task_loss(trainer, take_half(batch))[1].backward()
    expected = [0.5 * p.grad.clone() for p in trainer.model.parameters()]  # the rank's half, weighted by its share
    reduced = []
    trainer.world = _world(take_half, reduced)
    trainer.optimizer = trainer.new_optimizer()
    torch.manual_seed(0)
    trainer.step(batch, 0, 1)
    ((params, grads),) = reduced  # summed over the ranks once, over every trainable parameter
    assert len(params) == len(expected) and all(p is q for p, q in zip(params, trainer.model.parameters()))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    trainer.model.load_state_dict(start)
    trainer.sharding = object()  # FSDP reduced them already
    trainer.step(batch, 0, 1)
    assert len(reduced) == 1


def test_a_rank_with_nothing_of_the_batch_steps_on_one_example_weighted_zero(tmp_path):
    from forgetting.distributed import take

    trainer, _ = _trainer(tmp_path)
    batch = _one_batch(trainer, 0)
    trainer.world = _world(lambda b: take(b, torch.arange(0)), [])
    mine, share = trainer._share(batch)
    assert share == 0.0 and len(mine) == 1 and torch.equal(mine.inputs, batch.inputs[:1])
    assert torch.equal(mine.targets, batch.targets[:1])
    trainer.world = _world(take_half, [])
    trainer.objective.loss_units = lambda b: 0  # a batch without a unit of loss (every token masked)
    mine, share = trainer._share(batch)
    assert share == 0.0 and len(mine) == 1
