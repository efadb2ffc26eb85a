"""Training recipes: the optimiser, schedule, clipping and precision options change what they should."""

from __future__ import annotations

import math

import pytest
import torch

from forgetting.errors import BadInput
from forgetting.models.mlp import MLP
from forgetting.registry import build_methods, make_config
from forgetting.streams import build_stream, iterate_batches
from forgetting.train import Trainer


def trainer(method="naive", **loop):
    config = make_config(method=method, progress=False, device="cpu", **loop)
    stream = build_stream("split-digits", "domain", {})
    stream.tasks = stream.tasks[:2]
    torch.manual_seed(0)
    model = MLP(stream.input_shape, stream.layout.n_outputs, hidden=[16], dropout=0.0)
    return Trainer(config, stream, model, build_methods(method, config.hparams), torch.device("cpu"))


def rates_per_epoch(tr, task=0):
    """The learning rate each epoch of ``task`` trained with (read at every step: constant within an epoch)."""
    seen: dict[int, set] = {}
    step = tr.step

    def spy(batch, t, epoch):
        seen.setdefault(epoch, set()).add(tr.optimizer.param_groups[0]["lr"])
        return step(batch, t, epoch)

    tr.step = spy
    tr.train_task(task)
    assert all(len(v) == 1 for v in seen.values())
    return [seen[e].pop() for e in sorted(seen)]


def test_cosine_schedule_with_warmup_against_hand_values():
    tr = trainer(epochs=5, lr=0.1, lr_schedule="cosine", warmup_epochs=2)
    # warm-up: 0.1 * 1/2, 0.1 * 2/2; then 0.1 * (1 + cos(pi * k / 3)) / 2 for k = 0, 1, 2
    hand = [0.05, 0.1, 0.1, 0.05 * (1 + 0.5), 0.05 * (1 - 0.5)]
    assert rates_per_epoch(tr, 0) == pytest.approx(hand, rel=1e-12)
    assert rates_per_epoch(tr, 1) == pytest.approx(hand, rel=1e-12)  # a fresh schedule for each task


def test_cosine_without_warmup_and_step_schedule():
    tr = trainer(epochs=4, lr=0.2, lr_schedule="cosine")
    assert rates_per_epoch(tr) == pytest.approx([0.2 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    tr = trainer(epochs=5, lr=0.2, lr_schedule="step", lr_milestones=[2, 4], lr_gamma=0.5)
    assert rates_per_epoch(tr) == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05])


def test_default_is_a_constant_rate_adam():
    tr = trainer(epochs=2)
    assert rates_per_epoch(tr) == [1e-3, 1e-3]
    assert type(tr.optimizer) is torch.optim.Adam and tr.scheduler is None
    assert tr.optimizer.param_groups[0]["weight_decay"] == 0


def test_sgd_momentum_and_weight_decay_reach_the_optimizer_and_the_update():
    tr = trainer(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.01)
    tr.optimizer = tr.new_optimizer()
    group = tr.optimizer.param_groups[0]
    assert type(tr.optimizer) is torch.optim.SGD
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 0.01)
    batches = list(iterate_batches(tr.stream.tasks[0].train, 0, 32, shuffle=False))[:2]
    w = tr.model.head.weight
    velocity = torch.zeros_like(w)
    for batch in batches:  # by hand: v = 0.9 v + (g + wd w); w = w - lr v
        before = w.detach().clone()
        tr.model.zero_grad()
        torch.nn.functional.cross_entropy(tr.model(batch.inputs), batch.targets).backward()
        velocity = 0.9 * velocity + (w.grad + 0.01 * before) if velocity.any() else w.grad + 0.01 * before
        tr.step(batch, 0, 1)
        assert torch.allclose(w.detach(), before - 0.1 * velocity, atol=1e-7)


def test_adamw_decouples_weight_decay():
    tr = trainer(optimizer="adamw", weight_decay=0.5, lr=0.01)
    tr.optimizer = tr.new_optimizer()
    assert type(tr.optimizer) is torch.optim.AdamW and tr.optimizer.param_groups[0]["weight_decay"] == 0.5
    batch = next(iterate_batches(tr.stream.tasks[0].train, 0, 32, shuffle=False))
    w = tr.model.head.weight
    before = w.detach().clone()
    tr.model.zero_grad()
    torch.nn.functional.cross_entropy(tr.model(batch.inputs), batch.targets).backward()
    g = w.grad.clone()
    tr.step(batch, 0, 1)
    # first AdamW step: w (1 - lr wd) - lr * g / (|g| + eps)  (bias-corrected moments are g and g^2)
    expected = before * (1 - 0.01 * 0.5) - 0.01 * g / (g.abs() + 1e-8)
    assert torch.allclose(w.detach(), expected, atol=1e-6)


def test_grad_clip_bounds_the_update_norm():
    tr = trainer(optimizer="sgd", lr=1.0, grad_clip=1e-3)
    tr.optimizer = tr.new_optimizer()
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.step(next(iterate_batches(tr.stream.tasks[0].train, 0, 32, shuffle=False)), 0, 1)
    update = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(tr.model.parameters(), before)))
    assert float(update) == pytest.approx(1e-3, rel=1e-4)  # the gradient norm is far above 1e-3: clipped to it


@pytest.mark.parametrize("options, named", [
    (dict(momentum=0.9), "--momentum 0.9: applies to --optimizer sgd only"),
    (dict(lr_schedule="step"), "--lr-schedule step: needs --lr-milestones"),
    (dict(lr_milestones=[3]), "--lr-milestones: applies to --lr-schedule step only"),
    (dict(optimizer="rmsprop"), "--optimizer: bad value 'rmsprop'"),
    (dict(amp="fp8"), "--amp: bad value 'fp8'"),
    (dict(method="avalanche-naive", lr_schedule="cosine"), "--lr-schedule cosine: applies to our training loop only"),
])
def test_bad_recipes_are_refused(options, named):
    with pytest.raises(BadInput, match=named):
        make_config(**options)


def test_mixed_precision_on_cpu_is_refused_in_one_line(cli, tmp_path):
    proc = cli("forgetting.run", "--amp", "bf16", "--device", "cpu", "--results-dir", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("--amp bf16: mixed precision runs on CUDA only; on cpu use --amp off")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cuda(precision):
    config = make_config(method="kl", epochs=1, amp=precision, progress=False, device="cuda")
    stream = build_stream("split-digits", "domain", {})
    stream.tasks = stream.tasks[:2]
    model = MLP(stream.input_shape, stream.layout.n_outputs, hidden=[16])
    tr = Trainer(config, stream, model, build_methods("kl", config.hparams), torch.device("cuda"))
    tr.fit()
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())  # autocast, not a cast of the weights
    assert tr.evaluator.evaluate_task(tr.model, 1)["accuracy"] > 0.6


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_path_on_cpu_with_the_device_check_lifted(monkeypatch, precision):
    """The mixed-precision code path (CPU autocast stands in for CUDA's): the student's pass is autocast, the
    penalty and the teacher stay fp32, so the teacher cache still gives exactly the live teacher's numbers."""
    from forgetting import optim

    monkeypatch.setattr(optim, "check_device", lambda amp, device: None)
    params = {}
    for cache in (True, False):
        config = make_config(method="kl", epochs=1, amp=precision, teacher_cache=cache, progress=False,
                             device="cpu")
        stream = build_stream("split-digits", "domain", {})
        stream.tasks = stream.tasks[:2]
        torch.manual_seed(0)
        model = MLP(stream.input_shape, stream.layout.n_outputs, hidden=[16], dropout=0.0)
        tr = Trainer(config, stream, model, build_methods("kl", config.hparams), torch.device("cpu"))
        assert (tr.scaler is not None) == (precision == "fp16")
        seen, dtypes = [], set()
        step, task_loss = tr.step, tr._loss_method.task_loss
        tr.step = lambda batch, t, epoch: seen.append(step(batch, t, epoch)) or seen[-1]

        def spy(trainer, batch):
            out = task_loss(trainer, batch)
            dtypes.add(out[0].dtype)
            return out

        tr._loss_method.task_loss = spy
        tr.fit()
        assert dtypes == {torch.bfloat16 if precision == "bf16" else torch.float16}  # the student's pass, autocast
        assert all(math.isfinite(p["loss"]) for p in seen) and any("kl" in p for p in seen)
        assert all(p.dtype == torch.float32 for p in tr.model.parameters())
        params[cache] = [p.detach().clone() for p in tr.model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(params[True], params[False]))
