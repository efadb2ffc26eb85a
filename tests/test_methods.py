"""Each method's defining property, against hand computations on tiny models, plus its CLI options."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FixedTeacher
from forgetting.config import CORE_OPTIONS, RunConfig
from forgetting.registry import make_config
from forgetting.errors import BadInput
from forgetting.registry import build_methods, method_classes as parse_method, method_options
from forgetting.methods.ewc import Method as EWC, diagonal_fisher
from forgetting.methods.ewc_online import Method as OnlineEWC
from forgetting.methods.joint import Method as Joint
from forgetting.methods.kl import Method as KL
from forgetting.objectives.classification import Classification
from forgetting.methods.l2sp import Method as L2SP
from forgetting.methods.mas import output_sensitivity
from forgetting.methods.rdrop import Method as RDrop
from forgetting.methods.replay import ClassBalancedReservoir
from forgetting.methods.si import Method as SI
from forgetting.options import check_all
from forgetting.run import build_parser, config_from_args
from forgetting.streams import build_stream
from forgetting.streams.base import Batch, HeadLayout, TensorData, concat_inputs, gather_examples, layout_for
from forgetting.teacher import frozen_copy
from forgetting.train import Trainer


class TwoParams(nn.Module):
    """logits = (a x, b x) for a scalar input x: two parameters, Fisher and MAS by hand."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x):
        x = x.reshape(-1)
        return torch.stack([self.a * x, self.b * x], dim=1)


XS = [0.5, -1.0, 2.0, 1.5]
YS = [0, 1, 1, 0]


def softmax2(z0, z1):
    m = max(z0, z1)
    e0, e1 = math.exp(z0 - m), math.exp(z1 - m)
    return e0 / (e0 + e1), e1 / (e0 + e1)


def two_param_data():
    return TensorData(torch.tensor(XS).reshape(-1, 1), torch.tensor(YS))


DOMAIN2 = HeadLayout("domain", [[0, 1]], 2)


# --- EWC ---------------------------------------------------------------------------------------
def test_ewc_true_fisher_matches_hand_computation():
    a, b = 0.7, -0.4
    model = TwoParams(a, b)
    fisher = diagonal_fisher(model, two_param_data(), 0, DOMAIN2, "true", "cpu")
    # d log p_c / da = x (1[c=0] - p0); expectation over c ~ p of its square: x^2 p0 p1 (the same for b)
    expected = sum(x * x * softmax2(a * x, b * x)[0] * softmax2(a * x, b * x)[1] for x in XS) / len(XS)
    assert fisher["a"].item() == pytest.approx(expected, rel=1e-5)
    assert fisher["b"].item() == pytest.approx(expected, rel=1e-5)


def test_ewc_empirical_fisher_matches_hand_computation():
    a, b = 0.7, -0.4
    model = TwoParams(a, b)
    fisher = diagonal_fisher(model, two_param_data(), 0, DOMAIN2, "empirical", "cpu")
    # d(-log p_y)/da = -x (1[y=0] - p0): squared, x^2 (1 - p_y)^2 for both parameters
    expected = sum(x * x * (1 - softmax2(a * x, b * x)[y]) ** 2 for x, y in zip(XS, YS)) / len(XS)
    assert fisher["a"].item() == pytest.approx(expected, rel=1e-5)
    assert fisher["b"].item() == pytest.approx(expected, rel=1e-5)


def test_ewc_fisher_uses_only_the_tasks_head_and_leaves_the_model_alone():
    # task scenario, two heads of two outputs; a bias-free linear map: output j = w_j x
    layout = layout_for("task", 2, [2, 2])
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 4, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.3], [-0.2], [1.0], [2.0]]))
    model.train()
    before = model[1].weight.detach().clone()
    data = TensorData(torch.tensor(XS).reshape(-1, 1, 1), torch.tensor(YS))  # targets 0/1: task 0's head
    fisher = diagonal_fisher(model, data, 0, layout, "true", "cpu")["1.weight"].reshape(-1)
    w = before.reshape(-1).tolist()
    expected = sum(x * x * softmax2(w[0] * x, w[1] * x)[0] * softmax2(w[0] * x, w[1] * x)[1] for x in XS) / len(XS)
    assert fisher[0].item() == pytest.approx(expected, rel=1e-5)
    assert fisher[1].item() == pytest.approx(expected, rel=1e-5)
    assert fisher[2].item() == 0.0 and fisher[3].item() == 0.0  # task 1's head plays no part in task 0
    assert torch.equal(model[1].weight, before) and model.training


@pytest.mark.parametrize("scenario", ["task", "class"])
def test_linear_shortcut_equals_true_per_example_gradients(scenario):
    # the outer-product shortcut for Linear layers against torch.func per-example gradients
    stream = build_stream("split-digits", scenario, {})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Dropout(0.3), nn.Linear(12, 10))
    with torch.no_grad():
        model[4].bias.normal_()  # a non-zero bias makes the heads' outputs differ
    data = TensorData(stream.tasks[1].train.inputs[:40], stream.tasks[1].train.targets[:40])
    for labels in ("true", "empirical"):
        fast = diagonal_fisher(model, data, 1, stream.layout, labels, "cpu")
        slow = diagonal_fisher(model, data, 1, stream.layout, labels, "cpu", shortcut=False)
        for name in slow:
            assert torch.allclose(fast[name], slow[name], rtol=1e-4, atol=1e-9), (labels, name)
        assert fast["4.weight"].abs().sum() > 0
    fast = output_sensitivity(model, data, 1, stream.layout, "cpu")
    slow = output_sensitivity(model, data, 1, stream.layout, "cpu", shortcut=False)
    assert all(torch.allclose(fast[n], slow[n], rtol=1e-4, atol=1e-9) for n in slow)


class _Shared(nn.Module):
    """One layer applied twice, and two layers tying one weight: per-example gradients do not factor."""

    def __init__(self):
        super().__init__()
        self.twice = nn.Linear(4, 4)
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.twice(torch.tanh(self.twice(x.reshape(len(x), -1)))))
        return self.out(torch.tanh(self.b(torch.tanh(self.a(h)))))


def _fisher_with_and_without_shortcut(model, n):
    """The true Fisher on n random examples both ways, checked equal (names, shapes, values); the shortcut's."""
    torch.manual_seed(0)
    data = TensorData(torch.randn(n, 4), torch.randint(0, 2, (n,)))
    fast = diagonal_fisher(model, data, 0, DOMAIN2, "true", "cpu")
    slow = diagonal_fisher(model, data, 0, DOMAIN2, "true", "cpu", shortcut=False)
    assert set(fast) == set(slow) == {name for name, _ in model.named_parameters()}
    assert all(fast[k].shape == slow[k].shape and torch.allclose(fast[k], slow[k], rtol=1e-4, atol=1e-10) for k in slow)
    return fast


def test_shortcut_steps_aside_for_layers_used_twice_or_sharing_weights():
    torch.manual_seed(0)
    _fisher_with_and_without_shortcut(_Shared(), 12)


def _linear_fisher_by_hand(w, b, xs):
    """The true Fisher of logits W x + b (two outputs, scalar x), mean over xs: x^2 p0 p1 per weight, p0 p1 per bias."""
    ps = [softmax2(w[0] * x + b[0], w[1] * x + b[1]) for x in xs]
    return (sum(x * x * p0 * p1 for x, (p0, p1) in zip(xs, ps)) / len(xs), sum(p0 * p1 for p0, p1 in ps) / len(xs))


@pytest.mark.parametrize("shortcut", [True, False])
def test_fisher_of_a_model_that_is_one_linear_layer_keeps_its_names_and_dtype(shortcut):
    # the whole model one Linear (its parameters named "weight" and "bias", no prefix), in float64: the Fisher has
    # the parameters' names and dtype, and the hand values
    model = nn.Linear(1, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.7], [-0.4]]))
        model.bias.copy_(torch.tensor([0.2, -0.1]))
    data = TensorData(torch.tensor(XS, dtype=torch.float64).reshape(-1, 1), torch.tensor(YS))
    fisher = diagonal_fisher(model, data, 0, DOMAIN2, "true", "cpu", shortcut=shortcut)
    assert set(fisher) == {"weight", "bias"}
    assert all(f.dtype == torch.float64 for f in fisher.values())
    weight, bias = _linear_fisher_by_hand([0.7, -0.4], [0.2, -0.1], XS)
    assert fisher["weight"].reshape(-1).tolist() == pytest.approx([weight, weight], rel=1e-5)
    assert fisher["bias"].tolist() == pytest.approx([bias, bias], rel=1e-5)


@pytest.mark.parametrize("budget, xs", [(12, XS), (2**25, XS[:1])])
def test_fisher_is_the_mean_over_every_example_across_chunks_and_of_one_example(monkeypatch, budget, xs):
    # GRAD_BUDGET 12 over 4 parameters: chunks of 3 examples, so the 4 examples come in two chunks (3 and 1);
    # the mean is over all 4, not over the last chunk; and a single example's Fisher is its own, not halved
    import forgetting.methods.importance as importance

    monkeypatch.setattr(importance, "GRAD_BUDGET", budget)
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.7], [-0.4]]))
        model.bias.zero_()
    data = TensorData(torch.tensor(xs).reshape(-1, 1), torch.tensor(YS[:len(xs)]))
    fisher = diagonal_fisher(model, data, 0, DOMAIN2, "true", "cpu")
    weight, bias = _linear_fisher_by_hand([0.7, -0.4], [0.0, 0.0], xs)
    assert fisher["weight"][0, 0].item() == pytest.approx(weight, rel=1e-5)
    assert fisher["bias"][0].item() == pytest.approx(bias, rel=1e-5)


def test_fisher_leaves_the_random_stream_alone():
    # the classifier's true Fisher is an exact expectation (no sampling) over the examples in order: taking it
    # draws nothing from torch's generator, so an ewc run at weight 0 stays the naive run (naive_at_zero)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 2))
    state = torch.get_rng_state()
    diagonal_fisher(model, two_param_data(), 0, DOMAIN2, "true", "cpu")
    assert torch.equal(torch.get_rng_state(), state)


class _Awkward(nn.Module):
    """What the Linear shortcut must step aside for or handle: a Linear over a sequence (3-D input), a side
    Linear whose output never reaches the logits, and two bias-free Linears tying one weight (GPT-2's head)."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Linear(2, 3)
        self.side = nn.Linear(2, 2)
        self.a, self.b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
        self.b.weight = self.a.weight
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        x = x.reshape(len(x), 2, 2)  # [examples, positions, features]
        self.side(x[:, 0])  # computed, never used
        h = torch.tanh(self.seq(x)).mean(1)
        return self.out(torch.tanh(self.b(torch.tanh(self.a(h)))))


def test_shortcut_gives_the_per_example_fisher_on_sequences_unused_and_tied_layers():
    torch.manual_seed(0)
    fast = _fisher_with_and_without_shortcut(_Awkward(), 6)
    assert fast["side.weight"].abs().sum() == 0 and fast["side.bias"].abs().sum() == 0
    assert fast["seq.weight"].abs().sum() > 0 and fast["a.weight"].abs().sum() > 0


def _fake_trainer(model, n_tasks=3):
    return SimpleNamespace(model=model, stream=[None] * n_tasks, layout=DOMAIN2, device="cpu",
                           objective=Classification(DOMAIN2))


def test_ewc_penalty_is_one_term_per_task_and_online_ewc_accumulates():
    model = TwoParams(1.0, 2.0)
    f1, a1 = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}, {"a": torch.tensor(0.5), "b": torch.tensor(1.0)}
    f2, a2 = {"a": torch.tensor(1.0), "b": torch.tensor(4.0)}, {"a": torch.tensor(0.0), "b": torch.tensor(2.5)}
    ewc = EWC(ewc_lambda=10.0, ewc_fisher="true")
    ewc.consolidate(f1, a1)
    ewc.consolidate(f2, a2)
    value, weight = ewc.penalties(_fake_trainer(model), None, None, 2)["ewc"]
    hand = 0.5 * (2 * 0.5**2 + 3 * 1.0**2) + 0.5 * (1 * 1.0**2 + 4 * 0.5**2)
    assert weight == 10.0 and value.item() == pytest.approx(hand)

    online = OnlineEWC(ewc_lambda=10.0, ewc_fisher="true", ewc_gamma=0.9)
    online.consolidate(f1, a1)
    online.consolidate(f2, a2)
    value, weight = online.penalties(_fake_trainer(model), None, None, 2)["ewc"]
    # stored Fisher 0.9 * F1 + F2 = (2.8, 6.7), anchored at the last parameters only, and decayed once
    # more in the penalty (Schwarz et al. 2018; van de Ven et al.): 1/2 * 0.9 * sum F (theta - theta*)^2
    assert len(online.consolidated) == 1
    assert torch.allclose(online.consolidated[0][0]["a"], torch.tensor(2.8))
    assert weight == 10.0 and value.item() == pytest.approx(0.5 * 0.9 * (2.8 * 1.0**2 + 6.7 * 0.5**2))  # 2.016
    value.backward()  # d/da = 0.9 F_a (a - a*) = 0.9 * 2.8 * 1.0
    assert model.a.grad.item() == pytest.approx(2.52)
    assert EWC(ewc_lambda=1.0, ewc_fisher="true").penalties(_fake_trainer(model), None, None, 0) == {}


class _Stream:
    """A stream as ``after_task`` reads it: ``tasks[t].train``, ``len``, and optionally ``n_learned``
    (``--learn-tasks``: the tasks after it are evaluated, never learned)."""

    def __init__(self, n_tasks, n_learned=None):
        self.tasks = [SimpleNamespace(train=two_param_data()) for _ in range(n_tasks)]
        if n_learned is not None:
            self.n_learned = n_learned

    def __len__(self):
        return len(self.tasks)


@pytest.mark.parametrize("n_tasks, n_learned", [(3, None), (4, 3)])
def test_ewc_consolidates_after_every_learned_task_but_the_last(n_tasks, n_learned):
    # after task t the Fisher at the current weights and the weights themselves become a penalty term; after the
    # last task that is learned (the stream's n_learned, else its length) nothing follows, so nothing is computed
    a, b = 0.7, -0.4
    model = TwoParams(a, b)
    trainer = SimpleNamespace(model=model, stream=_Stream(n_tasks, n_learned), device="cpu",
                              objective=Classification(DOMAIN2))
    ewc = EWC(ewc_lambda=1.0, ewc_fisher="true")
    learned = n_learned or n_tasks
    expected = sum(x * x * softmax2(a * x, b * x)[0] * softmax2(a * x, b * x)[1] for x in XS) / len(XS)
    for task in range(learned):
        ewc.after_task(trainer, task)
        assert len(ewc.consolidated) == min(task + 1, learned - 1), task
    for fisher, anchor in ewc.consolidated:
        assert fisher["a"].item() == pytest.approx(expected, rel=1e-5)
        assert torch.equal(anchor["a"], model.a.detach()) and torch.equal(anchor["b"], model.b.detach())


def test_ewc_penalty_at_weight_one_and_zero_and_through_its_saved_state():
    model = TwoParams(1.0, 2.0)
    f1, a1 = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}, {"a": torch.tensor(0.5), "b": torch.tensor(1.0)}
    hand = 0.5 * (2 * 0.5**2 + 3 * 1.0**2)
    ewc = EWC(ewc_lambda=1.0, ewc_fisher="true")
    ewc.consolidate(f1, a1)
    value, weight = ewc.penalties(_fake_trainer(model), None, None, 1)["ewc"]
    assert weight == 1.0 and value.item() == pytest.approx(hand)
    off = EWC(ewc_lambda=0.0, ewc_fisher="true")
    off.consolidate(f1, a1)
    assert off.penalties(_fake_trainer(model), None, None, 1) == {}  # lambda 0: naive, no term computed
    # a resumed run's EWC (a new instance given the saved state) has the same terms
    resumed = EWC(ewc_lambda=1.0, ewc_fisher="true")
    resumed.load_state_dict(ewc.state_dict())
    value, _ = resumed.penalties(_fake_trainer(model), None, None, 1)["ewc"]
    assert value.item() == pytest.approx(hand)
    (fisher, anchor), = resumed.consolidated
    assert all(torch.equal(fisher[n], f1[n]) and torch.equal(anchor[n], a1[n]) for n in "ab")


# --- SI ----------------------------------------------------------------------------------------
def _si_task(si, trainer, target, steps, lr, task):
    """SGD on (theta - target)^2 / 2 plus SI's penalty, calling the hooks as the Trainer does."""
    model = trainer.model
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    si.before_task(trainer, task)
    data_grads = []
    for _ in range(steps):
        loss = 0.5 * (model.a - target) ** 2 + 0 * model.b
        data_grads.append(float(model.a.detach() - target))
        for value, weight in si.penalties(trainer, None, None, task).values():
            loss = loss + weight * value
        opt.zero_grad()
        loss.backward()
        si.after_backward(trainer, task)
        opt.step()
        si.after_step(trainer, task)
    si.after_task(trainer, task)
    return data_grads


def test_si_importance_matches_the_path_integral_by_hand():
    model = TwoParams(0.0, 1.0)
    trainer = _fake_trainer(model)
    si = SI(si_c=0.5, si_xi=0.1)
    lr, target = 0.3, 2.0
    grads = _si_task(si, trainer, target, 4, lr, 0)
    # SGD: delta = -lr g, so the path integral is sum lr g^2; Omega = w / (total move^2 + xi)
    w = sum(lr * g * g for g in grads)
    moved = model.a.item() - 0.0
    assert si.omega["a"].item() == pytest.approx(w / (moved**2 + 0.1), rel=1e-5)
    assert si.omega["b"].item() == 0.0  # b never moved (zero gradient): no importance
    # task 1: the path integral uses the loss gradient without SI's own penalty term
    omega0, anchor0 = si.omega["a"].item(), model.a.item()
    start = model.a.item()
    grads = _si_task(si, trainer, -1.0, 3, lr, 1)
    a_vals, a = [], start
    for g in grads:  # replay the steps by hand: the total gradient includes 2 c Omega (a - a*)
        total = g + 2 * 0.5 * omega0 * (a - anchor0)
        a_vals.append((g, -lr * total))
        a += -lr * total
    w1 = sum(-g * d for g, d in a_vals)
    assert model.a.item() == pytest.approx(a, rel=1e-5)
    assert si.omega["a"].item() == pytest.approx(omega0 + w1 / ((a - start) ** 2 + 0.1), rel=1e-5)


def test_si_on_digits_gives_zero_importance_to_parameters_that_never_moved():
    # pixels 0, 32 and 39 of the 8x8 digits are 0 in every image: their first-layer weights get
    # no gradient, so Adam never moves them; a frozen layer is left out altogether
    trainer = _trainer("split-digits", "domain", "si", {}, hidden=[16], epochs=1, n_tasks=2)
    trainer.model.features[1].bias.requires_grad_(False)
    si = trainer.methods[0]
    trainer.fit()
    w = si.omega["features.1.weight"]
    assert torch.count_nonzero(w[:, [0, 32, 39]]) == 0
    assert torch.count_nonzero(w[:, 1:32]) > 0.5 * w[:, 1:32].numel()
    assert "features.1.bias" not in si.omega


# --- MAS ---------------------------------------------------------------------------------------
def test_mas_importance_matches_hand_computation():
    a, b = 0.7, -0.4
    omega = output_sensitivity(TwoParams(a, b), two_param_data(), 0, DOMAIN2, "cpu")
    # ||f||^2 = (a^2 + b^2) x^2: |d/da| = 2 |a| x^2, averaged over examples
    mean_x2 = sum(x * x for x in XS) / len(XS)
    assert omega["a"].item() == pytest.approx(2 * abs(a) * mean_x2, rel=1e-6)
    assert omega["b"].item() == pytest.approx(2 * abs(b) * mean_x2, rel=1e-6)


# --- L2-SP -------------------------------------------------------------------------------------
def test_l2sp_pulls_towards_the_snapshot_and_leaves_it_unchanged():
    model = TwoParams(1.0, -2.0)
    snap = frozen_copy(model)
    with torch.no_grad():
        model.a += 0.5
        model.b -= 1.5
    trainer = SimpleNamespace(model=model, previous_model=snap)
    method = L2SP(l2sp_alpha=0.1)
    assert method.penalties(trainer, None, None, 0) == {}
    value, weight = method.penalties(trainer, None, None, 1)["l2sp"]
    assert weight == 0.1 and value.item() == pytest.approx(0.5 * (0.5**2 + 1.5**2))
    value.backward()
    assert model.a.grad.item() == pytest.approx(0.5) and model.b.grad.item() == pytest.approx(-1.5)
    assert snap.a.item() == 1.0 and snap.a.grad is None


# --- replay ------------------------------------------------------------------------------------
def test_class_balanced_reservoir_stays_balanced_and_within_its_size():
    gen = torch.Generator().manual_seed(0)
    buf = ClassBalancedReservoir(30)
    seen: dict = {}
    # an imbalanced stream in task order: class 0 x50, class 1 x5, then classes 2, 3 x40 and 4 x3
    stream = [0] * 50 + [1] * 5 + [2, 3] * 40 + [4] * 3
    for i, c in enumerate(stream):
        buf.add(c, i, gen)
        seen[c] = seen.get(c, 0) + 1
        counts = buf.counts()
        assert sum(counts.values()) == min(30, i + 1)
        top = max(counts.values())
        for k, m in counts.items():  # a class holds all it has seen, or is within one of the largest
            assert m == seen[k] or m >= top - 1
    counts = buf.counts()  # the rare classes keep all they saw; the other 22 places split 7/7/8
    assert counts[1] == 5 and counts[4] == 3 and sorted([counts[0], counts[2], counts[3]]) == [7, 7, 8]
    assert all(stream[i] == c for c, i in buf.all_items())  # every stored item is of its class


def test_replay_mixes_buffer_examples_into_each_batch():
    trainer = _trainer("split-digits", "task", "replay", {"replay_size": 20, "replay_batch_size": 8},
                       hidden=[8], epochs=1, n_tasks=3)
    replay = trainer.methods[0]
    assert all(len(b) <= 32 for b in replay.batches(trainer, 0, 1))  # nothing to replay yet
    trainer.train_task(0)
    trainer.train_task(1)
    counts = replay.buffer.counts()  # (task, target) classes of tasks 0 and 1, 5 places each
    assert counts == {(t, y): 5 for t in range(2) for y in trainer.layout.task_outputs[t]}
    batches = list(replay.batches(trainer, 2, 1))
    data = trainer.stream.tasks
    assert sum(int((b.task_ids == 2).sum()) for b in batches) == len(data[2].train)
    stored = {it for _, it in replay.buffer.all_items()}
    for b in batches:
        old = b.task_ids != 2
        assert int(old.sum()) == 8 and bool((b.index[old] == -1).all())
        # the replayed rows are buffer examples with their own targets (their own head in `task`)
        for x, y, t in zip(b.inputs[old], b.targets[old], b.task_ids[old].tolist()):
            matches = [i for (tt, i) in stored if tt == t and torch.equal(data[t].train.inputs[i], x)]
            assert matches and int(data[t].train.targets[matches[0]]) == int(y)
            assert int(y) in trainer.layout.task_outputs[t]


# --- joint -------------------------------------------------------------------------------------
def test_joint_sees_every_example_of_the_tasks_so_far_once_per_epoch():
    trainer = _trainer("split-digits", "class", "joint", {}, hidden=[8], epochs=1, n_tasks=5)
    joint: Joint = trainer.methods[0]
    tasks = trainer.stream.tasks
    seen = []
    for b in joint.batches(trainer, 2, 1):
        assert len(b) <= trainer.config.batch_size
        for t, i, x, y in zip(b.task_ids.tolist(), b.index.tolist(), b.inputs, b.targets):
            if t != 2:
                assert i == -1
                i = next(j for j in range(len(tasks[t].train)) if torch.equal(tasks[t].train.inputs[j], x))
            assert int(tasks[t].train.targets[i]) == int(y)
            seen.append((t, i))
    assert sorted(seen) == sorted((t, i) for t in range(3) for i in range(len(tasks[t].train)))


def test_gather_examples_joins_tasks_and_pads_token_dicts():
    a = TensorData(torch.arange(10.0).reshape(5, 2), torch.tensor([0, 1, 0, 1, 0]))
    b = TensorData(torch.arange(100.0, 106.0).reshape(3, 2), torch.tensor([2, 3, 2]))
    batch = gather_examples([a, b], torch.tensor([1, 0, 1]), torch.tensor([2, 4, 0]))
    assert batch.task_ids.tolist() == [0, 1, 1] and batch.index.tolist() == [4, 2, 0]
    assert batch.inputs.tolist() == [[8.0, 9.0], [104.0, 105.0], [100.0, 101.0]]
    assert batch.targets.tolist() == [0, 2, 2]
    short = {"input_ids": torch.tensor([[101, 7, 102]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    long = {"input_ids": torch.tensor([[101, 5, 6, 7, 102]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    joined = concat_inputs([short, long])
    assert joined["input_ids"].tolist() == [[101, 7, 102, 0, 0], [101, 5, 6, 7, 102]]
    assert joined["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


# --- kl: directions by hand --------------------------------------------------------------------
def _kl_by_hand(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def _softmax(z, t=1.0):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("direction", ["forward", "reverse", "symmetric"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_method_matches_hand_values_per_old_head(direction, temperature):
    layout = layout_for("task", 3, [2, 2, 2])
    student = torch.tensor([[0.2, -1.0, 0.5, 1.5, 3.0, 0.0], [1.0, 2.0, -0.5, 0.3, 0.0, 9.0]])
    teacher_out = torch.tensor([[1.0, 0.0, 0.0, 0.5, -3.0, 1.0], [0.0, 0.5, 0.4, -0.2, 7.0, 0.0]])
    trainer = SimpleNamespace(previous_model=FixedTeacher(teacher_out), layout=layout, objective=Classification(layout))
    method = KL(kl_lambda=0.7, kl_direction=direction, temperature=temperature)
    batch = Batch(torch.zeros(2, 1), torch.tensor([4, 5]), torch.tensor([2, 2]), torch.arange(2))
    value, weight = method.penalties(trainer, batch, student, 2)["kl"]
    heads = []
    for outs in ([0, 1], [2, 3]):  # the old heads of tasks 0 and 1; task 2's head is not held
        per_example = []
        for s, t in zip(student.tolist(), teacher_out.tolist()):
            pn = _softmax([s[o] for o in outs], temperature)
            po = _softmax([t[o] for o in outs], temperature)
            kl = {"forward": _kl_by_hand(po, pn), "reverse": _kl_by_hand(pn, po),
                  "symmetric": 0.5 * (_kl_by_hand(po, pn) + _kl_by_hand(pn, po))}[direction]
            per_example.append(kl * temperature**2)
        heads.append(sum(per_example) / len(per_example))
    assert weight == 0.7 and value.item() == pytest.approx(sum(heads) / 2, rel=1e-5)




# --- rdrop -------------------------------------------------------------------------------------
def test_rdrop_passes_differ_under_dropout_and_its_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    layout = HeadLayout("domain", [[0, 1, 2]], 3)
    trainer = SimpleNamespace(model=model, layout=layout, current_task=0, objective=Classification(layout))
    batch = Batch(torch.randn(5, 6), torch.tensor([0, 2, 1, 1, 0]), torch.zeros(5, dtype=torch.long), torch.arange(5))
    method = RDrop(rdrop_alpha=0.8)
    model.train()
    torch.manual_seed(1)
    logits, data_loss, terms = method.task_loss(trainer, batch)
    torch.manual_seed(1)
    l1, l2 = model(batch.inputs), model(batch.inputs)
    assert not torch.allclose(l1, l2)  # dropout: the two passes differ
    assert torch.equal(logits, l1)
    ce = 0.5 * (F.cross_entropy(l1, batch.targets) + F.cross_entropy(l2, batch.targets))
    p1, p2 = l1.softmax(1).tolist(), l2.softmax(1).tolist()
    sym = sum(0.5 * (_kl_by_hand(a, b) + _kl_by_hand(b, a)) for a, b in zip(p1, p2)) / 5
    value, weight = terms["rdrop"]
    assert data_loss.item() == pytest.approx(ce.item(), rel=1e-6)
    assert weight == 0.8 and value.item() == pytest.approx(sym, rel=1e-5)
    model.eval()  # one pass, no consistency term: the passes would coincide
    with torch.no_grad():
        assert torch.equal(model(batch.inputs), model(batch.inputs))
    logits, data_loss, terms = method.task_loss(trainer, batch)
    assert terms == {} and data_loss.item() == pytest.approx(F.cross_entropy(logits, batch.targets).item())


# --- every method through the loop, and composition ----------------------------------------------
def _trainer(benchmark, scenario, method, hparams, hidden, epochs, n_tasks=None):
    stream = build_stream(benchmark, scenario, {"n_tasks": 5, "download": False})
    if n_tasks is not None:
        stream.tasks = stream.tasks[:n_tasks]
    config = make_config(benchmark=benchmark, scenario=scenario, method=method,
                       hparams=check_all(method_options(method), hparams),
                       model_options={"hidden": hidden, "dropout": 0.1}, epochs=epochs, batch_size=32,
                       progress=False, **{o.name: o.default for o in CORE_OPTIONS if o.name not in ("epochs", "batch_size")})
    from forgetting.registry import build_model

    torch.manual_seed(config.seed)
    model = build_model("mlp", stream, config.model_options)
    return Trainer(config, stream, model, build_methods(method, config.hparams), torch.device("cpu"))


@pytest.mark.parametrize("method", ["naive", "joint", "ewc", "ewc-online", "si", "mas", "l2sp", "replay", "replay+kl",
                                    "ewc+kl", "si+rdrop"])
@pytest.mark.parametrize("scenario", ["task", "class"])
def test_every_method_trains_through_the_loop(method, scenario):
    trainer = _trainer("split-digits", scenario, method, {}, hidden=[32], epochs=5, n_tasks=3)
    rows = []
    trainer.record = lambda phase, t, epoch, loss: rows.append((phase, t, epoch, loss)) or []
    trainer.train_task(0)
    assert trainer.evaluator.evaluate_task(trainer.model, 0)["accuracy"] > 0.9  # 0 vs 1, learned by every method
    base = {n: p.clone() for n, p in trainer.base_model.named_parameters()}
    trainer.train_task(1)
    trainer.train_task(2)
    assert [r[1] for r in rows] == [t for t in range(3) for _ in range(5)] and all(math.isfinite(r[3]) for r in rows)
    # fine-tuning moved the model, and the base snapshot stayed bitwise as it was taken: methods only read it
    assert any(not torch.equal(p, base[n]) for n, p in trainer.model.named_parameters())
    assert all(torch.equal(p, base[n]) for n, p in trainer.base_model.named_parameters())


# --- options: defaults, errors -----------------------------------------------------------------
def _config(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_method_options_reach_the_config_with_paper_defaults():
    c = _config("--method", "ewc-online", "--ewc-gamma", "0.9")
    assert c.hparams == {"ewc_lambda": 1e5, "ewc_fisher": "true", "ewc_gamma": 0.9}
    assert _config("--method", "si").hparams == {"si_c": 1.0, "si_xi": 1e-3}
    assert _config("--method", "replay+kl", "--replay-size", "50").hparams["replay_size"] == 50
    assert [m.strength() for m in build_methods("replay+kl", _config("--method", "replay+kl").hparams)] == [0.0, 1.0]
    assert [c.name for c in parse_method("replay+kl")] == ["replay", "kl"]


@pytest.mark.parametrize("argv, named", [
    (["--method", "ewc", "--ewc-lambda", "-1"], "--ewc-lambda"),
    (["--method", "ewc", "--ewc-fisher", "sampled"], "--ewc-fisher"),
    (["--method", "ewc-online", "--ewc-gamma", "1.5"], "--ewc-gamma"),
    (["--method", "si", "--si-xi", "0"], "--si-xi"),
    (["--method", "si", "--si-c", "nan"], "--si-c"),
    (["--method", "mas", "--mas-lambda", "x"], "--mas-lambda"),
    (["--method", "l2sp", "--l2sp-alpha", "-0.1"], "--l2sp-alpha"),
    (["--method", "replay", "--replay-size", "0"], "--replay-size"),
    (["--method", "replay", "--replay-batch-size", "2.5"], "--replay-batch-size"),
    (["--method", "ewc", "--si-c", "1"], "--si-c"),
    (["--method", "replay+joint"], "replay+joint"),
])
def test_bad_method_options_are_one_line_errors_naming_the_value(argv, named):
    with pytest.raises(BadInput) as e:
        _config(*argv)
    assert named in str(e.value) and "\n" not in str(e.value)


def test_cli_bad_value_exits_2_without_a_results_directory(cli, tmp_path):
    out = tmp_path / "results"
    proc = cli("forgetting.run", "--method", "ewc", "--ewc-lambda", "-5", "--results-dir", str(out))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--ewc-lambda" in proc.stderr and "-5" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
