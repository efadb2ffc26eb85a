"""Avalanche integration: our streams as its benchmarks, its strategies in our harness, our penalty as its plugin."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

pytest.importorskip("avalanche")
# Avalanche's own noise: deprecations inside it, and no loggers (we record with our Evaluator)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:avalanche", "ignore:No loggers specified")

from avalanche.core import SupervisedPlugin  # noqa: E402
from avalanche.training import Naive  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin, LwFPlugin, SynapticIntelligencePlugin  # noqa: E402

from forgetting.integrations import AVALANCHE_METHODS  # noqa: E402
from forgetting.integrations.avalanche import (  # noqa: E402
    AvalancheTrainer,
    CopyingSIPlugin,
    HeadCrossEntropy,
    KLRegPlugin,
    TaskLabelled,
    to_avalanche_benchmark,
)
from forgetting.methods.kl import Method as KL  # noqa: E402
from forgetting.objectives.classification import Classification  # noqa: E402
from forgetting.metrics import accuracy_matrix, run_summary  # noqa: E402
from forgetting.models.mlp import MLP  # noqa: E402
from forgetting.penalty import kl_penalty  # noqa: E402
from forgetting.results import METRIC_COLUMNS  # noqa: E402
from forgetting.run import build_parser, config_from_args, prepare, run_experiment  # noqa: E402
from forgetting.run import main as run_main  # noqa: E402
from forgetting.streams import Batch, build_stream  # noqa: E402


def digits(scenario: str = "domain"):
    return build_stream("split-digits", scenario, {"n_tasks": 5, "download": False})


def config(tmp_path, *args: str):
    return config_from_args(build_parser().parse_args([*args, "--quiet", "--results-dir", str(tmp_path)]))


def naive_strategy(model, plugins, epochs: int = 1, criterion=None):
    return Naive(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                 criterion=criterion or torch.nn.CrossEntropyLoss(), train_mb_size=32, train_epochs=epochs,
                 plugins=plugins, evaluator=EvaluationPlugin(), eval_every=-1)


def mlp(seed: int = 0, dropout: float = 0.2, n_outputs: int = 2) -> MLP:
    torch.manual_seed(seed)
    return MLP((1, 8, 8), n_outputs, hidden=[64], dropout=dropout)


# --- the benchmark ----------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_benchmark_holds_the_stream_exactly(scenario):
    stream = digits(scenario)
    bm = to_avalanche_benchmark(stream)
    for split in ("train", "test"):
        exps = list(getattr(bm, f"{split}_stream"))
        assert len(exps) == len(stream)
        for t, (exp, task) in enumerate(zip(exps, stream.tasks)):
            data = getattr(task, split)
            x, y, tl = next(iter(DataLoader(exp.dataset, batch_size=len(exp.dataset))))  # as Avalanche batches it
            assert torch.equal(x, data.inputs) and torch.equal(y, data.targets)
            label = t if scenario == "task" else 0
            assert set(tl.tolist()) == {label} and exp.task_labels == [label]
            assert set(exp.classes_in_this_experience) == set(task.outputs)


def test_head_cross_entropy_is_masked_cross_entropy_by_hand():
    layout = digits("task").layout  # heads [0,1], [2,3], ...
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5, 9.0, 1.0, 0, 0, 0, 0],
                           [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 0.2, 0.0]])
    targets = torch.tensor([1, 7])  # head 0 (outputs 0-1), head 3 (outputs 6-7)
    by_hand = ((math.log(math.exp(0.3) + math.exp(-1.0)) - (-1.0))
               + (math.log(math.exp(1.0) + math.exp(5.0)) - 5.0)) / 2
    assert float(HeadCrossEntropy(layout)(logits, targets)) == pytest.approx(by_hand, rel=1e-6)
    every = HeadCrossEntropy(digits("class").layout, lambda: 4)  # class, last task: every output active
    assert torch.equal(every(logits, targets), F.cross_entropy(logits, targets))
    seen = HeadCrossEntropy(digits("class").layout, lambda: 3)  # class, task 3: outputs 0-7 active
    assert float(seen(logits, targets)) == pytest.approx(float(F.cross_entropy(logits[:, :8], targets)), rel=1e-6)


def test_task_labelled_model_gives_the_wrapped_models_outputs():
    model = mlp(n_outputs=10).eval()
    wrapped = TaskLabelled(model)
    wrapped.known_train_tasks_labels = {0, 2}
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(wrapped(x, torch.tensor([0, 1, 2, 3, 4])), model(x))
    every = wrapped(x, None)
    assert set(every) == {0, 2} and all(torch.equal(v, model(x)) for v in every.values())


# --- our penalty as a plugin ---------------------------------------------------------------------


class Spy(SupervisedPlugin):
    """Recomputes the loss from an independent eval-mode snapshot, after KLRegPlugin has added its term."""

    def __init__(self, kl: KLRegPlugin, criterion):
        super().__init__()
        self.kl, self.criterion = kl, criterion
        self.snapshot = None
        self.seen: list[tuple] = []

    def before_backward(self, strategy, **kwargs):
        if self.snapshot is None:
            return
        with torch.no_grad():
            teacher = self.snapshot(strategy.mb_x)
        expected = kl_penalty(strategy.mb_output, teacher, direction="reverse", temperature=2.0)
        loss = self.criterion(strategy.mb_output, strategy.mb_y) + 0.5 * expected
        self.seen.append((self.kl.last_kl, expected.detach(), strategy.loss.detach(), loss.detach(), self.kl.teacher))

    def after_training_exp(self, strategy, **kwargs):
        self.snapshot = copy.deepcopy(strategy.model).eval()


def test_kl_plugin_loss_is_kl_penalty_and_its_teacher_is_frozen():
    bm = to_avalanche_benchmark(digits("domain"))
    model = mlp(dropout=0.3)  # dropout on: a teacher in train mode would not match the eval-mode snapshot
    kl = KLRegPlugin(kl_lambda=0.5, direction="reverse", temperature=2.0)
    criterion = torch.nn.CrossEntropyLoss()
    spy = Spy(kl, criterion)
    strategy = naive_strategy(model, [kl, spy], criterion=criterion)
    strategy.train(bm.train_stream[0], eval_streams=[])
    assert kl.last_kl is None  # no penalty while learning the first task
    teacher = kl.teacher
    at_boundary = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in at_boundary.items())  # a snapshot of the model
    strategy.train(bm.train_stream[1], eval_streams=[])

    assert len(spy.seen) == math.ceil(len(bm.train_stream[1].dataset) / 32)
    for last_kl, expected_kl, loss, expected_loss, used in spy.seen:
        assert used is teacher
        assert torch.equal(last_kl, expected_kl)  # the plugin's KL is kl_penalty on the same logits
        assert torch.allclose(loss, expected_loss, rtol=1e-6, atol=1e-7)  # and the loss is CE + lambda * KL
    assert spy.seen[-1][0] > 0
    # the teacher of the second task: bitwise unchanged by its training, eval mode, no gradients
    assert all(torch.equal(v, at_boundary[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not all(torch.equal(v, at_boundary[k]) for k, v in model.state_dict().items())  # the student moved
    assert kl.teacher is not teacher  # and the next boundary took a new snapshot


def test_kl_plugin_per_head_groups_equal_our_kl_method():
    stream = digits("task")
    model, teacher = mlp(seed=0, n_outputs=10).eval(), mlp(seed=1, n_outputs=10).eval()
    x = stream.tasks[2].train.inputs[:16]
    plugin = KLRegPlugin(kl_lambda=1.0, temperature=2.0, output_groups=stream.layout.penalty_outputs)
    plugin.teacher, plugin.experiences_seen = teacher, 2
    with torch.no_grad():
        student, teacher_out = model(x), teacher(x)
        ours = KL(kl_lambda=1.0, kl_direction="forward", temperature=2.0)
        trainer = type("T", (), {"previous_model": teacher, "layout": stream.layout,
                                 "objective": Classification(stream.layout)})()
        batch = Batch(x, torch.zeros(16, dtype=torch.long), torch.full((16,), 2), torch.arange(16))
        expected, _ = ours.penalties(trainer, batch, student, task=2)["kl"]
        assert torch.equal(plugin.penalty(student, teacher_out), expected)
        heads = [kl_penalty(student[:, o], teacher_out[:, o], temperature=2.0) for o in ([0, 1], [2, 3])]
        assert torch.allclose(expected, (heads[0] + heads[1]) / 2)


def test_avalanche_lwf_teacher_keeps_dropout_ours_does_not():
    bm = to_avalanche_benchmark(digits("domain"))
    model = mlp(dropout=0.5)
    lwf, ours = LwFPlugin(alpha=1.0, temperature=2.0), KLRegPlugin(kl_lambda=0.0, temperature=2.0)
    naive_strategy(model, [lwf, ours]).train(bm.train_stream[0], eval_streams=[])
    x = digits("domain").tasks[1].train.inputs[:64]

    assert lwf.lwf.prev_model.training  # Avalanche deep-copies the model in train mode
    assert not ours.teacher.training
    with torch.no_grad():
        lwf_a, lwf_b = lwf.lwf.prev_model(x), lwf.lwf.prev_model(x)
        ours_a, ours_b = ours.teacher(x), ours.teacher(x)
        model.eval()
        student = model(x)  # the model has not moved since the boundary: it equals its teacher
        assert not torch.equal(lwf_a, lwf_b)  # dropout in the teacher: a different target every call
        assert torch.equal(ours_a, ours_b) and torch.equal(ours_a, student)
        # so a student identical to its teacher is penalised by LwF, not by ours
        assert float(lwf.lwf._lwf_penalty(student, x, model)) > 1e-4
        assert float(ours.penalty(student, ours_a)) == 0.0


# --- Avalanche's strategies ------------------------------------------------------------------------


def test_avalanche_lwf_distils_every_old_head_in_the_task_scenario(tmp_path):
    """Our model reaches Avalanche as multi-head (TaskLabelled), so LwF distils each head the layout defines."""
    cfg = config(tmp_path, "--method", "avalanche-lwf", "--scenario", "task", "--epochs", "1", "--dropout", "0",
                 "--av-lwf-alpha", "1", "--av-lwf-temperature", "2")
    device, stream, model, methods = prepare(cfg)
    trainer = AvalancheTrainer(cfg, stream, model, methods, device)
    trainer.fit()
    [lwf] = [p.lwf for p in trainer.strategy.plugins if isinstance(p, LwFPlugin)]
    heads = stream.layout.task_outputs
    assert dict(lwf.prev_classes_by_task) == {t: set(o) for t, o in enumerate(heads)}
    student = TaskLabelled(mlp(seed=3, dropout=0.0, n_outputs=10))
    student.known_train_tasks_labels = set(range(5))
    x = stream.tasks[4].test.inputs[:32]
    with torch.no_grad():
        got = lwf._lwf_penalty(None, x, student)
        s, t = student.model(x), lwf.prev_model.model(x)
        # Avalanche sums the heads' KL and leaves out the T^2 factor kl_penalty applies
        expected = sum(kl_penalty(s[:, o], t[:, o], temperature=2.0) for o in heads) / 4
    assert torch.allclose(got, expected, rtol=1e-5)



def test_stock_si_learns_nothing_on_cpu_ours_does():
    """Avalanche 0.6.0's SI stores views of the live weights on CPU; CopyingSIPlugin fixes that."""
    bm = to_avalanche_benchmark(digits("domain"))
    importances = {}
    for plugin in (SynapticIntelligencePlugin(si_lambda=1.0), CopyingSIPlugin(si_lambda=1.0)):
        model = mlp()
        naive_strategy(model, [plugin]).train(bm.train_stream[0], eval_streams=[])
        importances[type(plugin)] = torch.cat([d.data for d in plugin.ewc_data[1].values()])
        if isinstance(plugin, CopyingSIPlugin):  # the stored anchor is a copy of the weights, not a view
            anchor = {k: d.data.clone() for k, d in plugin.ewc_data[0].items()}
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
            assert all(torch.equal(d.data, anchor[k]) for k, d in plugin.ewc_data[0].items())
    assert torch.count_nonzero(importances[SynapticIntelligencePlugin]) == 0
    assert importances[CopyingSIPlugin].max() > 0


TRAINS_ON_OTHER_DATA = {"avalanche-gdumb", "avalanche-icarl", "avalanche-bic"}  # buffer only, task + buffer, task - held out
FAST = {"avalanche-bic": ["--av-bic-stage2-epochs", "2"]}


@pytest.mark.parametrize("method", sorted(AVALANCHE_METHODS))
def test_every_strategy_writes_our_rows(tmp_path, method):
    scenario = "domain" if "domain" in AVALANCHE_METHODS[method].scenarios else "class"
    cfg = config(tmp_path, "--method", method, "--epochs", "1", "--scenario", scenario, *FAST.get(method, []))
    run_dir, rows, status = run_experiment(cfg)
    assert status == "complete"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["completed_tasks"] == 5
    on_disk = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert on_disk == METRIC_COLUMNS
    assert set(rows["method"]) == {method}
    assert len(rows) == 5 + 5 * 5  # init, then one epoch per task, each evaluating all 5 tasks
    A = accuracy_matrix(rows)
    assert A.shape == (5, 5) and ((A >= 0) & (A <= 1)).all()
    stream = digits("domain")
    sizes = [len(t.train) for t in stream.tasks]
    if method == "avalanche-joint":  # tasks 0..t together, for every t
        steps = sum(math.ceil(sum(sizes[: t + 1]) / 32) for t in range(5))
    elif method == "avalanche-gdumb":  # the buffer alone: every example while it is not full, then 200
        steps = sum(math.ceil(min(sum(sizes[: t + 1]), 200) / 32) for t in range(5))
    else:
        steps = sum(math.ceil(n / 32) for n in sizes)
    if method in TRAINS_ON_OTHER_DATA - {"avalanche-gdumb"}:
        assert rows["global_step"].is_monotonic_increasing and rows["global_step"].max() > 0
    else:
        assert rows["global_step"].max() == steps
    assert rows[rows.phase == "epoch"]["kl_base"].iloc[5:].notna().all()  # KL drift once the base task is done
    if scenario == "class":  # iCaRL's nearest-mean and BiC's corrected predictions: far above naive's ~0.2
        assert run_summary(rows)["average_accuracy"] > 0.35


def test_memory_strategies_forget_less_than_naive(tmp_path):
    forgetting = {}
    for method in ("avalanche-naive", "avalanche-gem", "avalanche-replay"):
        _, rows, _ = run_experiment(config(tmp_path, "--method", method, "--epochs", "1"))
        forgetting[method] = run_summary(rows)["forgetting_max"]
    assert forgetting["avalanche-naive"] > 0.05
    assert forgetting["avalanche-gem"] < forgetting["avalanche-naive"] / 2
    assert forgetting["avalanche-replay"] < forgetting["avalanche-naive"] / 2


def test_each_task_starts_with_a_fresh_adam(tmp_path):
    class Probe(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.state_sizes = []

        def before_training_epoch(self, strategy, **kwargs):
            self.state_sizes.append(len(strategy.optimizer.state))

    probe = Probe()
    cfg = config(tmp_path, "--method", "avalanche-naive", "--epochs", "2")
    device, stream, model, methods = prepare(cfg)
    AvalancheTrainer(cfg, stream, model, methods, device, plugins=[probe]).fit()
    assert probe.state_sizes == [0, len(list(model.parameters()))] * 5


def test_naive_and_avalanche_naive_agree_on_split_digits(tmp_path):
    """Same model, epochs, batch size and learning rate: average accuracy within 2 points over 3 seeds."""
    means = {}
    for method in ("naive", "avalanche-naive"):
        accs = []
        for seed in range(3):
            _, rows, _ = run_experiment(config(tmp_path, "--method", method, "--epochs", "2", "--seed", str(seed)))
            accs.append(run_summary(rows)["average_accuracy"])
        means[method] = sum(accs) / 3
    assert 0.6 < means["naive"] < 0.98  # forgetting happens: neither chance nor perfect
    assert abs(means["naive"] - means["avalanche-naive"]) < 0.02


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_runs_an_avalanche_strategy(tmp_path, capsys):
    # the CLI's main in this process: README.md's avalanche-ewc block runs the same command as a process
    from forgetting.run import main

    code = main(["--method", "avalanche-ewc", "--av-ewc-lambda", "5", "--epochs", "1", "--results-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "average accuracy over the 5 tasks seen" in out.out
    [run_dir] = [p for p in tmp_path.iterdir() if p.is_dir()]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["method"] == {"name": "avalanche-ewc", "settings": {},
                             "options": {"av_ewc_lambda": 5.0, "av_ewc_mode": "separate", "av_ewc_decay": 1.0}}
    assert (run_dir / "metrics.csv").read_text().splitlines()[1].split(",")[METRIC_COLUMNS.index("lambda")] == "5.0"


@pytest.mark.parametrize("args, named", [
    (["--method", "avalanche-ewc+kl"], "avalanche-ewc+kl"),
    (["--method", "avalanche-ewc", "--av-ewc-lambda", "-1"], "-1"),
    (["--method", "avalanche-ewc", "--av-ewc-mode", "sometimes"], "sometimes"),
    (["--method", "kl", "--av-ewc-lambda", "1"], "--av-ewc-lambda"),
    (["--method", "avalanche-sgd"], "avalanche-sgd"),
    (["--method", "avalanche-ewc", "--av-ewc-decay", "0.5"], "--av-ewc-mode online"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, named):
    # in this process (the CLI's main); tests/test_cli_bad_input.py runs bad input in a real process too
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(run_main([*args, "--results-dir", str(tmp_path / "r")]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_a_non_finite_loss_in_avalanches_loop_says_where_it_stopped(tmp_path):
    from forgetting.errors import RunFailed
    from forgetting.registry import make_config
    from forgetting.results import read_run
    from forgetting.run import run_experiment

    config = make_config(method="avalanche-naive", lr=1e30, epochs=2, hidden=[16], results_dir=str(tmp_path),
                         progress=False)
    with pytest.raises(RunFailed) as e:
        run_experiment(config)
    assert set(e.value.where) >= {"task", "epoch", "step"} and e.value.where["epoch"] >= 1
    _, _, manifest = read_run(tmp_path / config.run_id)
    assert manifest["status"] == "failed"
    assert {k: manifest["failed_at"][k] for k in ("task", "epoch", "step")} == \
        {k: e.value.where[k] for k in ("task", "epoch", "step")}


def test_the_vs_avalanche_benchmark_times_both_loops_on_a_tiny_run():
    """benchmarks/vs_avalanche.py drives both trainers with its own in-memory recorder: keep it in step
    with the trainer's recorder interface (a missing hook broke it once without any test noticing)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_avalanche.py"
    spec = importlib.util.spec_from_file_location("vs_avalanche", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for method in ("naive", "avalanche-naive"):
        seconds, accuracy = bench.timed_run(["--benchmark", "split-digits", "--epochs", "1", "--method", method,
                                             "--hidden", "16", "--device", "cpu"])
        assert seconds > 0 and 0.0 <= accuracy <= 1.0
