"""The frozen teacher: bitwise unchanged, no gradients, eval mode; and lambda 0 is plain fine-tuning."""

import copy

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from forgetting import train_epoch_kl_reg
from forgetting.config import RunConfig
from forgetting.registry import make_config
from forgetting.registry import build_methods
from forgetting.models.mlp import MLP
from forgetting.streams import build_stream, iterate_batches
from forgetting.train import Trainer


class DropoutBNNet(nn.Module):
    """Dropout and batch-norm: eval mode changes both, so a teacher left in train mode would show."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


def state_copy(m: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def assert_bitwise_equal(m: nn.Module, saved: dict):
    now = m.state_dict()
    assert now.keys() == saved.keys()
    for k in saved:
        assert torch.equal(now[k], saved[k]), f"teacher tensor {k} changed"


def assert_frozen_teacher(teacher: nn.Module, saved: dict, x: torch.Tensor):
    assert_bitwise_equal(teacher, saved)
    assert all(p.grad is None for p in teacher.parameters()), "a gradient reached the teacher"
    assert not teacher.training
    with torch.no_grad():
        assert torch.equal(teacher(x), teacher(x)), "two teacher calls differ: dropout is on"


def test_train_epoch_kl_reg_leaves_teacher_untouched():
    torch.manual_seed(0)
    student = DropoutBNNet()
    teacher = copy.deepcopy(student)
    for _ in range(3):  # give the teacher different weights and running stats than the student
        teacher(torch.randn(32, 8))
    teacher.eval()
    saved = state_copy(teacher)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    before = state_copy(student)
    for _ in range(5):
        parts = train_epoch_kl_reg(student, teacher, x, y, opt, F.cross_entropy, 0.7, direction="forward", temperature=2.0)
    assert set(parts) == {"loss", "ce", "kl"}
    assert parts["loss"] == pytest.approx(parts["ce"] + 0.7 * parts["kl"], rel=1e-5)
    assert parts["kl"] > 0
    assert student.training
    assert any(not torch.equal(student.state_dict()[k], before[k]) for k in before), "the student did not move"
    assert_frozen_teacher(teacher, saved, x)


def test_train_epoch_kl_reg_puts_a_train_mode_teacher_in_eval_mode():
    torch.manual_seed(1)
    student, teacher = DropoutBNNet(), DropoutBNNet()
    teacher.train()  # a careless caller
    saved = state_copy(teacher)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    train_epoch_kl_reg(student, teacher, torch.randn(16, 8), torch.randint(0, 4, (16,)), opt, F.cross_entropy, 1.0)
    assert_frozen_teacher(teacher, saved, torch.randn(16, 8))  # running stats not updated either


def test_lambda_zero_is_exactly_a_cross_entropy_step():
    torch.manual_seed(2)
    a = DropoutBNNet()
    b = copy.deepcopy(a)
    teacher = copy.deepcopy(a).eval()
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2)
    for step in range(3):
        x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
        torch.manual_seed(100 + step)
        train_epoch_kl_reg(a, teacher, x, y, opt_a, F.cross_entropy, 0.0)
        torch.manual_seed(100 + step)  # same dropout mask for the plain step
        b.train()
        loss = F.cross_entropy(b(x), y)
        opt_b.zero_grad()
        loss.backward()
        opt_b.step()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), f"{k} differs between the lambda-0 step and the plain step"


def small_trainer(scenario="domain", method="kl", lam=1.0, epochs=2, seed=0):
    config = make_config(scenario=scenario, method=method, hparams={"kl_lambda": lam, "kl_direction": "forward",
                       "temperature": 1.0} if method == "kl" else {}, epochs=epochs, seed=seed, progress=False)
    stream = build_stream("split-digits", scenario, {})
    torch.manual_seed(seed)
    model = MLP(stream.input_shape, stream.layout.n_outputs, hidden=[64], dropout=0.5)
    return Trainer(config, stream, model, build_methods(method, config.hparams), torch.device("cpu"))


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_teacher_unchanged_through_a_fine_tuning_task(scenario):
    tr = small_trainer(scenario)
    tr.train_task(0)
    teacher = tr.previous_model
    assert tr.base_model is teacher
    saved = state_copy(teacher)
    student_before = state_copy(tr.model)
    tr.train_task(1)
    x = tr.stream.tasks[1].test.inputs[:64]
    assert_frozen_teacher(teacher, saved, x)
    assert any(not torch.equal(tr.model.state_dict()[k], student_before[k]) for k in student_before)
    assert tr.previous_model is not teacher, "the snapshot must be retaken at the task boundary"
    assert tr.base_model is teacher, "the base model stays the snapshot after task 0"


def test_trainer_kl_step_equals_train_epoch_kl_reg():
    """The loop's kl method computes the same update as the public one-step pattern."""
    tr = small_trainer("domain", lam=0.5)
    tr.train_task(0)
    reference = copy.deepcopy(tr.model)
    tr.optimizer = tr.new_optimizer()
    opt_ref = torch.optim.Adam(reference.parameters(), lr=tr.config.lr)
    batch = next(iterate_batches(tr.stream.tasks[1].train, 1, 32, shuffle=False))
    torch.manual_seed(7)
    tr.step(batch, 1, 1)
    torch.manual_seed(7)
    train_epoch_kl_reg(reference, tr.previous_model, batch.inputs, batch.targets, opt_ref, F.cross_entropy, 0.5)
    for (k, va), vb in zip(tr.model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(va, vb), f"{k} differs"


# --- ResNet-18 (BatchNorm): the same invariants on tiny images --------------------------------------


def tiny_image_stream(scenario="class"):
    """4 classes of random 3x8x8 images in 2 tasks: the reduced ResNet-18 runs on them in well under a second."""
    from forgetting.streams.splits import class_split_stream

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 12)
    x = rng.normal(size=(len(y), 3, 8, 8)).astype(np.float32) + y[:, None, None, None]  # learnable
    return class_split_stream("tiny-images", scenario, x, y, x[::3], y[::3], [(0, 1), (2, 3)], (3, 8, 8))


@pytest.mark.parametrize("cache", [True, False])
def test_resnet18_teacher_unchanged_through_fine_tuning_bn_stats_included(cache):
    from forgetting.models.resnet import ReducedResNet18
    from forgetting.registry import build_model

    stream = tiny_image_stream()
    config = make_config(method="kl", model="resnet18", scenario="class", epochs=2, batch_size=8, lr=1e-2,
                         teacher_cache=cache, resnet_width=4, progress=False, device="cpu")
    torch.manual_seed(0)
    model = build_model("resnet18", stream, {"resnet_width": 4})
    assert isinstance(model, ReducedResNet18) and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    tr = Trainer(config, stream, model, build_methods("kl", config.hparams), torch.device("cpu"))
    tr.train_task(0)
    teacher = tr.previous_model
    saved = state_copy(teacher)
    assert any(k.endswith("running_mean") for k in saved) and any(k.endswith("num_batches_tracked") for k in saved)
    student_before = state_copy(tr.model)
    tr.train_task(1)
    x = stream.tasks[1].test.inputs
    assert_frozen_teacher(teacher, saved, x)  # weights, running stats and the batch counter bitwise unchanged
    moved = [k for k in student_before if not torch.equal(tr.model.state_dict()[k], student_before[k])]
    assert any(k.endswith("running_mean") for k in moved) and any(k.endswith("weight") for k in moved)


def test_resnet18_shapes_and_options():
    from forgetting.models.resnet import ReducedResNet18, TorchvisionResNet18
    from forgetting.registry import build_model
    from forgetting.errors import BadInput

    stream = tiny_image_stream("task")
    reduced = build_model("resnet18", stream, {})
    assert isinstance(reduced, ReducedResNet18) and reduced.head.in_features == 8 * 20  # GEM's nf=20
    assert reduced.eval()(stream.tasks[0].test.inputs).shape == (8, 4)
    # GEM's reduced ResNet-18 for CIFAR-100 has 1.09M parameters, Mammoth's (nf=64) for CIFAR-10 11.17M
    assert sum(p.numel() for p in ReducedResNet18(3, 100, 20).parameters()) == 1_109_240
    assert sum(p.numel() for p in ReducedResNet18(3, 10, 64).parameters()) == 11_173_962
    tv = build_model("resnet18", stream, {"resnet_variant": "torchvision"})
    assert isinstance(tv, TorchvisionResNet18) and tv.head.in_features == 512
    with pytest.raises(BadInput, match="--resnet-width: bad value 0"):
        build_model("resnet18", stream, {"resnet_width": 0})
    with pytest.raises(BadInput, match="needs tensor inputs|reads tensor inputs"):
        make_config(benchmark="uci-sentiment", model="resnet18", data_dir=None)
