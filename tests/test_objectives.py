"""A new objective or a new method is one new file plus a registry line (issue #23).

A toy objective from a temporary package, regression with a Gaussian likelihood of unit variance, runs
``naive``, ``kl`` and ``ewc`` through the loop, its penalty and Fisher checked against hand values; a
method that needs class distributions is refused on a causal LM in one line naming method, objective and need.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from forgetting import registry
from forgetting.errors import BadInput
from forgetting.run import main, prepare, run_experiment
from forgetting.streams import iterate_batches

GAUSSIAN = '''
"""Regression with a Gaussian likelihood of unit variance: the model's one output is the mean."""
import torch
from forgetting.objectives import Objective
from forgetting.teacher import TeacherCache


class Gaussian(Objective):
    label = "regressors"
    provides = frozenset({"gaussian_mean"})

    def data_loss(self, logits, batch, task):
        return 0.5 * (logits[:, 0].float() - batch.targets).square().mean()  # the NLL up to a constant

    def penalty_kl(self, logits, batch, task, teacher, cache, *, direction, temperature, **_):
        # KL(N(m_t, 1) || N(m_s, 1)) = (m_t - m_s)^2 / 2, the same in both directions
        mean = cache.outputs[batch.index] if cache is not None and cache.holds(batch.task_ids, batch.index) \\
            else teacher(batch)
        return 0.5 * (logits[:, 0].float() - mean[:, 0].float()).square().mean()

    def teacher_cache(self, teacher, data, task, batch_size, device):
        with torch.no_grad():
            return TeacherCache(task, teacher(data.inputs.to(device)).float())

    def fisher_terms(self, model, task, labels, device):
        def nll(out, y):
            return 0.5 * (out[:, 0].float() - y).square()

        def terms(batch):
            if labels == "empirical":
                return [(batch.targets, nll, "square", None)]
            with torch.no_grad():  # y = m +- 1, each with probability 1/2: the squared score's mean under N(m, 1)
                m = model(batch.inputs)[:, 0].float()
            half = torch.full_like(m, 0.5)
            return [(m + 1, nll, "square", half), (m - 1, nll, "square", half)]
        return terms

    def evaluator(self, stream, batch_size, device, subset=0):
        return Evaluator(stream, device)


class Evaluator:
    def __init__(self, stream, device):
        self.stream, self.device = stream, device

    def evaluate(self, model, base_model=None, trained_task=None):
        rows = []
        with torch.no_grad():
            for k, task in enumerate(self.stream.tasks):
                x, y = task.test.inputs.to(self.device), task.test.targets.to(self.device)
                m = model(x)[:, 0]
                kl = float("nan") if base_model is None else float(0.5 * (m - base_model(x)[:, 0]).square().mean())
                rows.append({"eval_task": k, "eval_task_name": task.name, "loss": float(0.5 * (m - y).square().mean()),
                             "accuracy": float(((m - y).abs() < 0.5).float().mean()), "kl_base": kl, "n_eval": len(y)})
        return rows
'''

STREAM = '''
"""Two linear regression tasks on the same inputs (the targets of one are those of the other negated)."""
import torch
from forgetting.streams.base import HeadLayout, Task, TaskStream

OBJECTIVE = "toyreg.gaussian"  # the registry line: this stream's targets are for that objective


class Data:
    def __init__(self, inputs, targets):
        self.inputs, self.targets = inputs, targets

    def __len__(self):
        return len(self.targets)

    def gather(self, index):
        return self.inputs[index], self.targets[index]


def build(scenario, options):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, generator=g)
    tasks = []
    for t, sign in enumerate((1.0, -1.0)):
        x_train, x_test = torch.randn(48, 4, generator=g), torch.randn(16, 4, generator=g)
        tasks.append(Task(t, f"reg{t}", Data(x_train, sign * x_train @ w), Data(x_test, sign * x_test @ w),
                          ["y"], [0]))
    return TaskStream("toy-regression", scenario, tasks, HeadLayout("domain", [[0], [0]], 1), "tensor", (4,))
'''


@pytest.fixture
def toyreg(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg" / "toyreg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "gaussian.py").write_text(textwrap.dedent(GAUSSIAN))
    (pkg / "stream.py").write_text(textwrap.dedent(STREAM))
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    yield "toyreg.stream"
    for name in [m for m in sys.modules if m.startswith("toyreg")]:
        del sys.modules[name]


def toy_config(tmp_path, method, **hparams):
    return registry.make_config(benchmark="toyreg.stream", model="mlp", method=method, epochs=6, batch_size=8,
                                lr=3e-2, device="cpu", progress=False, results_dir=str(tmp_path / "results"),
                                model_options={"hidden": [8], "dropout": 0.0}, hparams=hparams)


@pytest.mark.parametrize("method", ["naive", "kl", "ewc"])
def test_a_toy_objective_from_a_package_runs_the_methods(toyreg, tmp_path, method):
    _, rows, status = run_experiment(toy_config(tmp_path, method))
    assert status == "complete"
    final = rows[(rows.phase == "epoch") & (rows.trained_task == 1) & (rows.epoch == 6)]
    assert list(final.eval_task) == [0, 1] and (final.loss > 0).all() and (final.kl_base > 0).all()
    for t in (0, 1) if method == "naive" else (0,):  # its Gaussian NLL fell while it trained (the objective's loss;
        # kl and ewc at their default strengths hold task 1 back)
        loss = rows[(rows.phase == "epoch") & (rows.eval_task == t) & (rows.trained_task == t)].loss
        before = rows[(rows.eval_task == t) & (rows.trained_task == t - 1)].loss.iloc[-1]
        assert loss.iloc[-1] < 0.7 * before, (t, before, list(loss))


def test_the_toy_objectives_penalty_and_fisher_are_its_own(toyreg, tmp_path):
    from forgetting.methods.ewc import diagonal_fisher
    from forgetting.train import Trainer

    config = toy_config(tmp_path, "kl", kl_lambda=2.0)
    device, stream, model, methods = prepare(config)
    assert stream.objective == "toyreg.gaussian"
    trainer = Trainer(config, stream, model, methods, device)
    assert type(trainer.objective).__name__ == "Gaussian"
    trainer.train_task(0)
    trainer.current_task = 1
    (kl,) = methods
    kl.before_task(trainer, 1)
    assert kl.cache is not None  # the objective's teacher cache
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05)
    batch = next(iterate_batches(stream.tasks[1].train, 1, 16, shuffle=False))
    value, weight = kl.penalties(trainer, batch, trainer.model(batch.inputs), 1)["kl"]
    with torch.no_grad():
        student = trainer.model(batch.inputs)[:, 0].double()
        teacher = trainer.previous_model(batch.inputs)[:, 0].double()
    assert weight == 2.0 and float(value.detach()) == pytest.approx(float(0.5 * (student - teacher).square().mean()), rel=1e-5)
    # EWC's Fisher over the objective's samples: for a linear mean m = w.x + b under N(m, 1) it is E[x^2] (and 1)
    linear = torch.nn.Linear(4, 1).double()
    data = stream.tasks[0].train
    data64 = type(data)(data.inputs.double(), data.targets.double())
    fisher = diagonal_fisher(linear, data64, 0, trainer.objective, "true", "cpu")
    assert torch.allclose(fisher["weight"][0], data64.inputs.square().mean(0), rtol=1e-6)
    assert float(fisher["bias"][0]) == pytest.approx(1.0, rel=1e-6)


SHARPEN = '''
"""A user's method that needs the class distribution: its own file, named by its module path."""
from forgetting.methods.base import Method as Base


class Method(Base):
    needs = frozenset({"class_distribution"})
    needs_why = "it sharpens the class distribution"
'''


def test_a_method_needing_class_distributions_is_refused_on_a_causal_lm(tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sharpen.py").write_text(SHARPEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "pairs.csv").write_text("task,prompt,response\n" + "".join(f"a,say {i},{i}\nb,add {i}, {i + 1}\n"
                                                                         for i in range(8)))
    argv = ["--benchmark", "text-file", "--text-file", str(tmp_path / "pairs.csv"), "--prompt-column", "prompt",
            "--response-column", "response", "--model", "gpt2", "--method", "mypkg.sharpen", "--device", "cpu",
            "--results-dir", str(tmp_path / "results"), "--quiet"]
    try:
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1, err
        assert "--method mypkg.sharpen: does not apply to causal LMs (objective causal-lm): it needs " \
               "class_distribution (it sharpens the class distribution)" in err[0]
        assert not (tmp_path / "results").exists()
        # the same method runs where the objective gives what it needs (a classifier)
        registry.resolve(registry.gather("split-digits", "mlp", "mypkg.sharpen", {}))
        with pytest.raises(BadInput, match="needs class_distribution"):
            registry.make_config(benchmark="text-file", model="gpt2", method="kl+mypkg.sharpen",
                                 stream_options={"text_file": str(tmp_path / "pairs.csv"), "prompt_column": "prompt",
                                                 "response_column": "response"})
    finally:
        for name in [m for m in sys.modules if m.startswith("mypkg")]:
            del sys.modules[name]
        registry._registered["method"].pop("mypkg.sharpen", None)


def test_the_quick_table_shows_each_objectives_own_columns(tmp_path):
    """A causal LM's row shows answer accuracy and NLL (its objective's report_measures, from its manifest),
    not token accuracy as 'avg acc'; a classifier's row (or one that predates the field) shows accuracy."""
    import pandas as pd

    from forgetting.objectives.causal_lm import CausalLM
    from forgetting.report_summary import METRICS
    from forgetting.sweep_table import console_table

    lm = ";".join(f"{c}:{h}:{s:g}" for c, h, s in CausalLM.report_measures)
    rows = []
    for label, measures, acc, nll in (("kl λ=1", "", 0.9, float("nan")), ("naive", lm, 0.25, 2.5)):
        row = {"benchmark": "b", "scenario": "domain", "label": label, "status": "complete", "n_seeds": 1,
               "report_measures": measures}
        for m, *_ in METRICS:
            row.update({f"{m}_mean": float("nan"), f"{m}_ci95_lo": float("nan"), f"{m}_ci95_hi": float("nan"),
                        f"{m}_ci95_cut": False})
        row.update(average_accuracy_mean=acc, answer_accuracy_mean=0.5 if measures else float("nan"),
                   old_task_nll_mean=nll, nll_forgetting_max_mean=0.125 if measures else float("nan"))
        rows.append(row)
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)
    lines = console_table(tmp_path / "summary.csv").splitlines()
    classifier_head, classifier, lm_head, lm_row = lines[2:6]
    assert "avg acc" in classifier_head and " 90.0" in classifier
    assert "answer acc" in lm_head and "old-task NLL" in lm_head and "avg acc" not in lm_head
    assert lm_row.split()[-3:] == ["50.0", "2.500", "0.125"]
