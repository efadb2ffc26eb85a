"""``der``: the reservoir and the DER / DER++ terms against a hand computation on a tiny buffer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import resumed_equals_whole
from forgetting.methods.der import Reservoir
from forgetting.metrics import run_summary
from forgetting.registry import build_methods, make_config
from forgetting.run import run_experiment
from forgetting.streams.base import Batch, Task, TaskStream, TensorData, layout_for
from forgetting.train import Trainer

XS = [[0.5, -1.0, 2.0, 1.5], [1.0, -0.5, 0.25, -2.0]]  # task 0, task 1: scalar inputs
YS = [[0, 1, 1, 0], [1, 1, 0, 0]]


class TwoParams(nn.Module):
    """logits = (a x, b x): every number below by hand."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(b))

    def forward(self, x):
        x = x.reshape(-1)
        return torch.stack([self.a * x, self.b * x], dim=1)


def tiny_stream():
    layout = layout_for("domain", 2, [2, 2])
    tasks = [Task(t, f"t{t}", TensorData(torch.tensor(XS[t]).reshape(-1, 1), torch.tensor(YS[t])),
                  TensorData(torch.tensor(XS[t]).reshape(-1, 1), torch.tensor(YS[t])), [0, 1], [0, 1])
             for t in range(2)]
    return TaskStream("tiny", "domain", tasks, layout, "tensor", (1,))


def ce(z0: float, z1: float, y: int) -> float:
    return math.log(math.exp(z0) + math.exp(z1)) - (z0, z1)[y]


def batch(task: int, index: list[int]) -> Batch:
    idx = torch.tensor(index)
    return Batch(torch.tensor(XS[task])[idx].reshape(-1, 1), torch.tensor(YS[task])[idx],
                 torch.full((len(idx),), task), idx)


def test_der_terms_and_reservoir_by_hand():
    config = make_config(method="der", der_size=3, der_batch_size=3, der_alpha=0.5, der_beta=0.25, batch_size=2,
                         optimizer="sgd", lr=0.1, progress=False, device="cpu")
    tr = Trainer(config, tiny_stream(), TwoParams(0.3, -0.2), build_methods("der", config.hparams),
                 torch.device("cpu"))
    tr.optimizer = tr.new_optimizer()
    der = tr.methods[0]

    # step 1: empty buffer, plain cross-entropy; examples 0 and 1 enter with their logits before the update
    a0, b0 = 0.3, -0.2
    parts = tr.step(batch(0, [0, 1]), 0, 1)
    assert set(parts) == {"loss", "data_loss"}
    assert parts["loss"] == pytest.approx((ce(a0 * 0.5, b0 * 0.5, 0) + ce(-a0, -b0, 1)) / 2, rel=1e-6)
    assert len(der.buffer) == 2 and der.buffer.refs[:2].tolist() == [[0, 0], [0, 1]]
    assert der.buffer.logits[:2].flatten().tolist() == pytest.approx([a0 * 0.5, b0 * 0.5, -a0, -b0])
    assert der.buffer.labels[:2].tolist() == [0, 1]

    # step 2 (task 1): both stored examples replayed; MSE to their stored logits, CE to their labels
    a1, b1 = tr.model.a.item(), tr.model.b.item()
    state = tr.generator.get_state()
    parts = tr.step(batch(1, [0, 3]), 1, 1)
    stored = [(0.5, 0), (-1.0, 1)]
    mse = sum((a1 * x - a0 * x) ** 2 + (b1 * x - b0 * x) ** 2 for x, _ in stored) / 4
    der_ce = sum(ce(a1 * x, b1 * x, y) for x, y in stored) / 2
    data = (ce(a1 * 1.0, b1 * 1.0, 1) + ce(-2.0 * a1, -2.0 * b1, 0)) / 2
    assert parts["der_mse"] == pytest.approx(mse, rel=1e-5) and mse > 0
    assert parts["der_ce"] == pytest.approx(der_ce, rel=1e-6)
    assert parts["loss"] == pytest.approx(data + 0.5 * mse + 0.25 * der_ce, rel=1e-6)

    # algorithm R: task-1 example 0 is the 3rd seen (slot 2); example 3 the 4th, kept in slot r if r < 3,
    # r uniform in [0, 3] drawn after the two replay draws of the step
    g = torch.Generator()
    g.set_state(state)
    torch.randperm(2, generator=g), torch.randperm(2, generator=g)
    r = int(torch.randint(0, 4, (1,), generator=g))
    expected = [[0, 0], [0, 1], [1, 0]]
    if r < 3:
        expected[r] = [1, 3]
    assert der.buffer.seen == 4 and der.buffer.refs.tolist() == expected
    assert der.buffer.logits[2].tolist() == pytest.approx([a1 * 1.0, b1 * 1.0])  # the logits before the update


def test_reservoir_keeps_a_uniform_sample():
    """Algorithm R: after n >> capacity examples, each is stored with probability capacity / n."""
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(100)
    for _ in range(400):
        res = Reservoir(10)
        refs = torch.stack([torch.zeros(100, dtype=torch.long), torch.arange(100)], dim=1)
        for start in range(0, 100, 7):
            res.add(refs[start:start + 7], torch.zeros(len(refs[start:start + 7]), 2),
                    torch.zeros(len(refs[start:start + 7]), dtype=torch.long), g)
        assert len(res) == 10 and res.seen == 100 and len(set(res.refs[:, 1].tolist())) == 10
        counts[res.refs[:, 1]] += 1
    # each example's count is Binomial(400, 0.1) under a uniform sample (mean 40, sd 6): a chi-square test of the
    # 100 counts, and no example far out (a sampler that favours some examples fails both)
    from scipy.stats import chisquare

    assert chisquare(counts.numpy()).pvalue > 1e-3 and 15 < float(counts.min()) and float(counts.max()) < 65
    assert float(counts[:50].sum()) == pytest.approx(float(counts[50:].sum()), rel=0.1)  # early and late examples alike


def test_der_alpha_zero_beta_zero_is_naive():
    results = {}
    for method, extra in (("naive", {}), ("der", {"der_alpha": 0.0})):
        config = make_config(method=method, epochs=1, progress=False, device="cpu", **extra)
        torch.manual_seed(0)
        tr = Trainer(config, tiny_stream(), TwoParams(0.3, -0.2), build_methods(method, config.hparams),
                     torch.device("cpu"))
        tr.fit()
        results[method] = (tr.model.a.item(), tr.model.b.item())
    assert results["naive"] == results["der"]  # the MSE term adds 0 * mse: the same gradients


def test_der_forgets_less_than_naive_on_split_digits_class_incremental(tmp_path):
    acc = {}
    for method in ("naive", "der"):
        cfg = make_config(method=method, scenario="class", epochs=2, results_dir=str(tmp_path), progress=False,
                          device="cpu", **({"der_beta": 0.5, "der_alpha": 0.1} if method == "der" else {}))
        _, rows, status = run_experiment(cfg)
        assert status == "complete"
        acc[method] = run_summary(rows)["average_accuracy"]
    assert acc["naive"] < 0.3  # class-incremental fine-tuning keeps little more than the last task
    assert acc["der"] > acc["naive"] + 0.2


def test_der_resumes_with_its_buffer(tmp_path, monkeypatch):
    cfg = make_config(method="der", der_beta=0.5, der_size=50, epochs=1, seed=1, scenario="class", progress=False,
                      device="cpu", results_dir=str(tmp_path / "cut"), hidden=[32])
    resumed_equals_whole(cfg, tmp_path, monkeypatch)
