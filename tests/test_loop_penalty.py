"""The loop's total loss and its gradient with ``kl``, by hand in float64: class and task scenarios, a causal LM.

(The domain scenario is ``test_teacher.py::test_trainer_kl_step_equals_train_epoch_kl_reg``.) One
``Trainer.step`` is taken with an optimiser of learning rate 0, so the gradient of the total loss the
loop built stays in ``.grad`` and is compared with the gradient of the loss written out here: the
cross-entropy over the outputs the task trains with plus lambda times the KL the scenario defines.
A KL cut from the graph gives the right loss value and the wrong gradient, and fails. The KL options
are left at their defaults, so these values also pin the default direction (forward) and temperature (1).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from forgetting.registry import build_methods, make_config
from forgetting.streams import iterate_batches
from forgetting.streams.splits import class_split_stream
from forgetting.teacher import frozen_copy
from forgetting.train import Trainer

LAM = 0.7


def tiny_stream(scenario: str):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 5)
    x = rng.normal(size=(len(y), 4)).astype(np.float32)
    return class_split_stream("tiny", scenario, x, y, x, y, [(0, 1), (2, 3), (4, 5)], (4,))


def net(n_out: int, seed: int, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, n_out))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return m


def one_step(stream, model, teacher, task: int, **options):
    """The loop's step on task ``task``'s first 8 training examples, the teacher given; (parts, grads, batch)."""
    config = make_config(scenario=stream.scenario, method="kl", kl_lambda=LAM, progress=False, device="cpu",
                         **options)
    tr = Trainer(config, stream, model, build_methods("kl", config.hparams), torch.device("cpu"))
    tr.previous_model = tr.base_model = frozen_copy(teacher)
    tr.current_task = task
    tr.optimizer = torch.optim.SGD(tr.model.parameters(), lr=0.0)
    for m in tr.methods:
        m.before_task(tr, task)  # the teacher cache, as the loop builds it
    batch = next(iterate_batches(stream.tasks[task].train, task, 8, shuffle=False))
    parts = tr.step(batch, task, 1)
    return parts, {n: p.grad.clone() for n, p in tr.model.named_parameters()}, batch


def log_softmax64(z):
    return torch.log_softmax(z.double(), 1)


def forward_kl(p_logits, q_logits):
    """mean over rows of sum_j p_j (log p_j - log q_j) (float64)."""
    log_p, log_q = log_softmax64(p_logits), log_softmax64(q_logits)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


def check(parts, grads, model64, loss, kl):
    loss.backward()
    assert kl.item() > 0.05  # the teacher differs: the penalty has a value and a gradient of its own
    assert parts["kl"] == pytest.approx(kl.item(), rel=1e-5)
    assert parts["loss"] == pytest.approx(loss.item(), rel=1e-5)
    for n, p in model64.named_parameters():
        assert torch.allclose(grads[n].double(), p.grad, rtol=1e-4, atol=1e-6), n


def test_class_scenario_step_is_ce_over_active_outputs_plus_lambda_padded_forward_kl():
    stream = tiny_stream("class")
    model, teacher = net(6, 0), net(6, 1, scale=3.0)
    model64 = copy.deepcopy(model).double()
    parts, grads, batch = one_step(stream, model, teacher, task=1)
    x, y = batch.inputs.double(), batch.targets
    z = model64(x)[:, :4]  # task 1 trains over the outputs of tasks 0 and 1
    ce = -log_softmax64(z)[torch.arange(len(y)), y].mean()
    with torch.no_grad():
        t = teacher.double()(x)[:, :2]  # the teacher knew task 0's outputs only: zero on the new ones
    log_p, log_q = log_softmax64(t), log_softmax64(z)[:, :2]
    kl = (log_p.exp() * (log_p - log_q)).sum(1).mean()
    check(parts, grads, model64, ce + LAM * kl, kl)


def test_class_scenario_old_outputs_form_is_the_kl_over_the_old_outputs():
    stream = tiny_stream("class")
    model, teacher = net(6, 0), net(6, 1, scale=3.0)
    model64 = copy.deepcopy(model).double()
    parts, grads, batch = one_step(stream, model, teacher, task=2, kl_class_outputs="old")
    x, y = batch.inputs.double(), batch.targets
    z = model64(x)  # task 2 of 3: every output active
    ce = -log_softmax64(z)[torch.arange(len(y)), y].mean()
    with torch.no_grad():
        t = teacher.double()(x)[:, :4]
    kl = forward_kl(t, z[:, :4])
    check(parts, grads, model64, ce + LAM * kl, kl)


def test_task_scenario_step_is_ce_on_its_head_plus_lambda_mean_kl_over_old_heads():
    stream = tiny_stream("task")
    model, teacher = net(6, 0), net(6, 1, scale=3.0)
    model64 = copy.deepcopy(model).double()
    parts, grads, batch = one_step(stream, model, teacher, task=2)
    x, y = batch.inputs.double(), batch.targets
    z = model64(x)
    ce = -log_softmax64(z[:, 4:6])[torch.arange(len(y)), y - 4].mean()  # its own head: outputs 4-5
    with torch.no_grad():
        t = teacher.double()(x)
    kl = (forward_kl(t[:, 0:2], z[:, 0:2]) + forward_kl(t[:, 2:4], z[:, 2:4])) / 2  # one KL per old head
    check(parts, grads, model64, ce + LAM * kl, kl)


def test_default_kl_options_are_forward_at_temperature_one():
    hp = make_config(method="kl").hparams
    assert (hp["kl_direction"], hp["temperature"], hp["kl_class_outputs"]) == ("forward", 1.0, "active")
    assert make_config(method="kl", scenario="class").hparams["kl_direction"] == "forward"


# --- a causal LM: token cross-entropy plus lambda times the mean per-token KL over the response ----------------


def test_causal_lm_step_is_token_ce_plus_lambda_forward_kl_over_response_tokens(tmp_path):
    from test_lm import TINY, pairs_stream

    from forgetting.registry import build_model

    stream = pairs_stream(tmp_path)
    torch.manual_seed(0)
    model = build_model("gpt2", stream, {**TINY, "gpt2_dropout": 0.0})
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model64 = copy.deepcopy(model).double()
    teacher64 = copy.deepcopy(teacher).double().eval()
    parts, grads, batch = one_step_lm(stream, model, teacher)
    labels = batch.inputs["labels"]
    inputs = dict(batch.inputs)
    z = model64(inputs)[:, :-1]
    with torch.no_grad():
        t = teacher64(inputs)[:, :-1]
    nxt = labels[:, 1:]
    keep = nxt != -100  # the response's tokens: not the prompt, not the padding
    assert (~keep & (batch.inputs["attention_mask"][:, 1:] == 1)).any() and (batch.inputs["attention_mask"] == 0).any()
    log_q, log_p = torch.log_softmax(z, -1), torch.log_softmax(t, -1)
    ce = -log_q[keep].gather(1, nxt[keep][:, None]).mean()
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)[keep].mean()
    check(parts, grads, model64, ce + LAM * kl, kl)


def one_step_lm(stream, model, teacher):
    from test_lm import config

    cfg = config("kl", kl_lambda=LAM)
    tr = Trainer(cfg, stream, model, build_methods("kl", cfg.hparams), torch.device("cpu"))
    tr.previous_model = tr.base_model = frozen_copy(teacher)
    tr.current_task = 1
    tr.optimizer = torch.optim.SGD(tr.model.parameters(), lr=0.0)
    for m in tr.methods:
        m.before_task(tr, 1)
    batch = next(iterate_batches(stream.tasks[1].train, 1, 6, shuffle=False))
    parts = tr.step(batch, 1, 1)
    return parts, {n: p.grad.clone() for n, p in tr.model.named_parameters()}, batch
