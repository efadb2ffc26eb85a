"""Avalanche on our terms: our streams as Avalanche benchmarks, Avalanche's strategies on our model
recorded by our evaluator, and our KL penalty as an Avalanche plugin.

- ``to_avalanche_benchmark(stream)``: one classification experience per task (train and test
  streams); targets are our output indices; task labels are the task ids in the ``task``
  scenario and 0 otherwise.
- ``AvalancheTrainer``: ``--method avalanche-ewc`` and the others. It is our ``Trainer`` with
  the loop handed to Avalanche: the same model object, a fresh optimiser per task (--optimizer, --momentum, --weight-decay), the same epochs
  and batch size, and the same ``Evaluator`` rows after every epoch, so ``forgetting.plot``
  draws the runs beside ours.
- ``KLRegPlugin``: ``kl_penalty`` towards a frozen eval-mode snapshot, inside any Avalanche
  strategy. Avalanche's own LwF deep-copies the model in train mode, so its teacher keeps
  dropout on (and gets no T^2 factor).

Importing this module imports Avalanche (seconds); the CLI imports it only for avalanche-* runs.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from types import SimpleNamespace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import avalanche.training as av_training
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import (
    ConstantSequence,
    DataAttribute,
    TaskAwareSupervisedClassificationDataset,
    TaskLabels,
)
from avalanche.core import SupervisedPlugin
from avalanche.models import MultiTaskModule, avalanche_forward
from avalanche.models.utils import is_multi_task_module
from avalanche.training.plugins import BiCPlugin, EvaluationPlugin, SynapticIntelligencePlugin
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from .. import progress
from ..errors import BadInput, RunFailed
from ..optim import build_optimizer
from ..penalty import check_penalty_options, grouped_kl_penalty
from ..streams.base import HeadLayout, TaskData, TaskStream
from ..teacher import frozen_copy
from ..train import Trainer
from . import AvalancheMethod

# --- data ----------------------------------------------------------------------------------


class _Examples(TensorDataset):
    """(input, target) pairs with the target a Python int, as Avalanche's own tensor datasets give them, so
    batches mixing a task's examples with a strategy's memory (iCaRL) collate."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x, int(y)


def avalanche_dataset(data: TaskData, task_label: int) -> TaskAwareSupervisedClassificationDataset:
    """A task's split as an Avalanche classification dataset yielding (x, y, task label)."""
    n = len(data)
    x, y = data.gather(torch.arange(n))
    if not isinstance(x, Tensor):
        raise BadInput(f"Avalanche strategies need tensor inputs; this stream gives {type(x).__name__} inputs")
    return TaskAwareSupervisedClassificationDataset(
        [_Examples(x, y)],
        data_attributes=[DataAttribute(y.tolist(), "targets"), TaskLabels(ConstantSequence(task_label, n))],
    )


def to_avalanche_benchmark(stream: TaskStream):
    """``train_stream`` and ``test_stream`` with one experience per task, in the stream's order."""
    label = (lambda t: t) if stream.scenario == "task" else (lambda t: 0)
    bm = benchmark_from_datasets(
        train=[avalanche_dataset(task.train, label(t)) for t, task in enumerate(stream.tasks)],
        test=[avalanche_dataset(task.test, label(t)) for t, task in enumerate(stream.tasks)],
    )
    return with_classes_timeline(with_task_labels(bm))


# --- model and loss ------------------------------------------------------------------------


class HeadCrossEntropy:
    """Our masked cross-entropy as an Avalanche criterion ``(logits, targets)``.

    In ``task`` the head is the one holding the target (heads are disjoint blocks of outputs),
    so examples replayed from memory (GEM, A-GEM, Replay) get their own head too. In ``class``
    the outputs active while the current task (``current_task()``) trains, as in our Trainer.
    """

    def __init__(self, layout: HeadLayout, current_task: Callable[[], int] = lambda: 0):
        self.layout = layout
        self.current_task = current_task
        owner = torch.zeros(layout.n_outputs, dtype=torch.long)
        for t, outs in enumerate(layout.task_outputs):
            owner[outs] = t
        self.owner = owner

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        task_ids = self.owner.to(targets.device)[targets]
        return F.cross_entropy(self.layout.masked(logits, task_ids, self.current_task()), targets)


class TaskLabelled(MultiTaskModule):
    """Our one-output-layer model seen by Avalanche as multi-head (``task`` scenario).

    Its outputs are the wrapped model's, whatever the task labels; Avalanche's task-aware code
    (LwF distilling every old head) then works on the heads our layout defines.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, task_labels=None):
        if task_labels is None:
            return self.forward_all_tasks(x)
        return self.model(x)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        return self.model(x)


# --- our penalty as a plugin ----------------------------------------------------------------


class KLRegPlugin(SupervisedPlugin):
    """Adds ``kl_lambda * kl_penalty(student, teacher)`` to an Avalanche strategy's loss.

    The teacher is a frozen, eval-mode snapshot of the strategy's model taken after each
    training experience, run under ``torch.no_grad``. ``output_groups(experience_index)``
    returns the groups of outputs to hold (the KL of each group, averaged), e.g. our
    ``layout.penalty_outputs``; by default all outputs. ``last_kl`` holds the last batch's KL.
    """

    def __init__(self, kl_lambda: float = 1.0, direction: str = "forward", temperature: float = 1.0,
                 output_groups: Callable[[int], Sequence[Sequence[int]]] | None = None):
        super().__init__()
        check_penalty_options(direction, temperature)
        if not (kl_lambda >= 0 and math.isfinite(kl_lambda)):
            raise ValueError(f"kl_lambda must be a finite number at least 0, got {kl_lambda!r}")
        self.kl_lambda = float(kl_lambda)
        self.direction = direction
        self.temperature = float(temperature)
        self.output_groups = output_groups
        self.teacher: nn.Module | None = None
        self.experiences_seen = 0
        self.last_kl: Tensor | None = None

    def teacher_logits(self, strategy) -> Tensor:
        assert self.teacher is not None and not self.teacher.training, "the teacher must be in eval mode"
        with torch.no_grad():
            if is_multi_task_module(self.teacher):
                return avalanche_forward(self.teacher, strategy.mb_x, strategy.mb_task_id)
            return self.teacher(strategy.mb_x)

    def penalty(self, student: Tensor, teacher: Tensor) -> Tensor:
        if self.output_groups is None:
            groups = [list(range(student.shape[1]))]
        else:
            groups = self.output_groups(self.experiences_seen)
        return grouped_kl_penalty(student, teacher, groups, direction=self.direction, temperature=self.temperature)

    def before_backward(self, strategy, **kwargs):
        if self.teacher is None or self.kl_lambda == 0:
            return
        kl = self.penalty(strategy.mb_output, self.teacher_logits(strategy))
        self.last_kl = kl.detach()
        strategy.loss = strategy.loss + self.kl_lambda * kl

    def after_training_exp(self, strategy, **kwargs):
        self.teacher = frozen_copy(strategy.model)
        self.experiences_seen += 1


# --- running Avalanche's strategies in our harness -------------------------------------------


class NearestMeanOfExemplars(nn.Module):
    """iCaRL's prediction: the nearest class mean of exemplars on the feature extractor's (normalised)
    features; before any class mean exists (during the first task) the trained head's."""

    def __init__(self, net: nn.Module):  # Avalanche's TrainEvalModel
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        features = self.net.feature_extractor(x)
        if self.net.eval_classifier.class_means_dict:
            return self.net.eval_classifier(features)
        return self.net.train_classifier(features)


class BiasCorrected(nn.Module):
    """BiC's prediction: the model's logits with the newest classes' scaled and shifted by the bias layer."""

    def __init__(self, model: nn.Module, bias_layer: nn.Module):
        super().__init__()
        self.model, self.bias_layer = model, bias_layer

    def forward(self, x: Tensor) -> Tensor:
        return self.bias_layer(self.model(x))



class CopyingSIPlugin(SynapticIntelligencePlugin):
    """Avalanche 0.6.0's Synaptic Intelligence with its CPU aliasing undone.

    It stores weights as ``param.detach().cpu().flatten()``, which on CPU is a view of the live
    parameter (``.cpu()`` copies only from another device): the "old" weights move with the
    model, every path integral is 0, and SI trains exactly like Naive. Cloning the two stored
    snapshots that must outlive the step (weights at the experience start, weights before the
    step) restores the algorithm; on CUDA the clones change nothing.
    """

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        for d in self.ewc_data[0].values():
            d.data = d.data.clone()

    def before_training_iteration(self, strategy, **kwargs):
        super().before_training_iteration(strategy, **kwargs)
        for d in self.syn_data["old_theta"].values():
            d.data = d.data.clone()


class SettableDatasetBiCPlugin(BiCPlugin):
    """Avalanche 0.6.0's BiC made to run on our experiences and this torch.

    BiC sets ``strategy.experience.dataset`` to the task's data minus the examples it holds out for
    the bias correction, but ``dataset`` is a read-only property of the experiences
    ``benchmark_from_datasets`` makes (AttributeError). For that one assignment the experience gets
    a setter that stores the data where the property reads it. Its bias correction passes
    ``verbose=`` to ``MultiStepLR``, which torch 2.14 no longer takes: it is dropped.
    """

    def bias_correction_step(self, strategy, *args, **kwargs):
        import avalanche.training.plugins.bic as bic_module

        original = bic_module.MultiStepLR
        bic_module.MultiStepLR = lambda optimizer, *a, verbose=None, **kw: original(optimizer, *a, **kw)
        try:
            return super().bias_correction_step(strategy, *args, **kwargs)
        finally:
            bic_module.MultiStepLR = original

    def before_train_dataset_adaptation(self, strategy, **kwargs):
        exp = strategy.experience
        cls = type(exp)
        exp.__class__ = type(cls.__name__, (cls,), {
            "dataset": property(cls.dataset.fget, lambda self, value: setattr(self, "_dataset", value))})
        try:
            super().before_train_dataset_adaptation(strategy, **kwargs)
        finally:
            exp.__class__ = cls


def strategy_class_and_plugins(method: AvalancheMethod) -> tuple[type, dict, list]:
    """The Avalanche strategy class, its keyword arguments and extra plugins for ``method``."""
    kwargs = method.strategy_kwargs()
    if method.strategy == "SynapticIntelligence":  # the same strategy: SupervisedTemplate + the SI plugin
        return av_training.Naive, {}, [CopyingSIPlugin(**kwargs)]
    if method.strategy == "BiC":  # the same strategy: SupervisedTemplate + the BiC plugin, made to run
        return av_training.Naive, {}, [SettableDatasetBiCPlugin(**kwargs)]
    return getattr(av_training, method.strategy), kwargs, []



class _Recorder(SupervisedPlugin):
    """Counts steps and evaluates with our ``Evaluator`` at the points our Trainer does."""

    def __init__(self, trainer: "AvalancheTrainer"):
        super().__init__()
        self.trainer = trainer
        self.epoch = 0
        self.loss_sum = 0.0
        self.n_batches = 0
        self.last_loss = float("nan")
        self.bar = None

    def before_training_exp(self, strategy, **kwargs):
        tr = self.trainer
        self.epoch = 0
        steps = len(strategy.dataloader) * strategy.train_epochs if hasattr(strategy.dataloader, "__len__") else None
        self.bar = progress.bar(steps, f"task {tr.current_task} {tr.stream.tasks[tr.current_task].name}",
                                tr.config.progress)

    def before_training_epoch(self, strategy, **kwargs):
        self.epoch += 1
        self.loss_sum, self.n_batches = 0.0, 0

    def before_update(self, strategy, **kwargs):
        loss = float(strategy.loss.detach())
        tr = self.trainer
        if not math.isfinite(loss):
            raise RunFailed(f"non-finite loss ({loss}) at task {tr.current_task} "
                            f"({tr.stream.tasks[tr.current_task].name}), epoch {self.epoch}, step {tr.global_step + 1}",
                            task=tr.current_task, epoch=self.epoch, step=tr.global_step + 1, loss=loss)
        self.loss_sum += loss
        self.n_batches += 1
        self.last_loss = loss

    def after_training_iteration(self, strategy, **kwargs):
        tr = self.trainer
        tr.global_step += 1
        self.bar.update(1)
        if tr.recorder is not None:
            tr.recorder.add_losses(tr.global_step, {"loss": self.last_loss})
        every = tr.config.eval_every
        if every and tr.global_step % every == 0:
            tr.record("step", tr.current_task, self.epoch, self.loss_sum / max(self.n_batches, 1))

    def after_training_epoch(self, strategy, **kwargs):
        tr = self.trainer
        self.last_loss = self.loss_sum / max(self.n_batches, 1)
        if self.epoch < strategy.train_epochs:  # the last epoch is recorded at the task boundary, once the
            tr.record("epoch", tr.current_task, self.epoch, self.last_loss)  # strategy's end-of-task work is done

    def after_training_exp(self, strategy, **kwargs):
        self.bar.close()


class AvalancheTrainer(Trainer):
    """Runs the Avalanche strategy an ``avalanche-*`` method names, on our stream and model.

    Everything but the loop is our Trainer's: the rows (``record``), the snapshots
    (``previous_model``, ``base_model``) and the task boundaries written to the recorder.
    ``avalanche-joint`` trains a JointTraining strategy from the initial weights on tasks 0..t,
    for every t, so the accuracy matrix has a row per task. ``plugins`` are added to the strategy's.
    """

    def __init__(self, config, stream, model, methods, device, recorder=None, plugins: Sequence[SupervisedPlugin] = ()):
        if len(methods) != 1 or not isinstance(methods[0], AvalancheMethod):
            raise BadInput(f"--method: {config.method.name!r}: an Avalanche strategy runs alone")
        method = methods[0]
        method.check_stream(stream)
        if method.strategy == "ICaRL" and not (hasattr(model, "features") and hasattr(model, "head")):
            raise BadInput(f"--method {config.method.name}: iCaRL needs a model split into a feature extractor and a "
                           f"classifier (.features and .head, as mlp and resnet18 are); {config.model.name!r} is not")
        super().__init__(config, stream, model, methods, device, recorder)
        self.method = methods[0]
        self.benchmark = to_avalanche_benchmark(stream)
        self.current_task = 0
        self.strategy = None
        self.extra_plugins = list(plugins)  # e.g. KLRegPlugin: our penalty inside Avalanche's loop

    def make_strategy(self):
        cls, kwargs, plugins = strategy_class_and_plugins(self.method)
        multi_head = self.stream.scenario == "task" and self.method.multi_head
        net = TaskLabelled(self.model) if multi_head else self.model
        self.optimizer = build_optimizer((p for p in self.model.parameters() if p.requires_grad), self.config)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No loggers specified")
            common = dict(optimizer=self.optimizer, train_mb_size=self.config.batch_size,
                          train_epochs=self.config.epochs, eval_mb_size=self.config.eval_batch_size, device=self.device,
                          plugins=[_Recorder(self), *plugins, *self.extra_plugins], evaluator=EvaluationPlugin(),
                          eval_every=-1)
            if self.method.strategy == "ICaRL":  # its own model (features + head + nearest-mean) and loss
                return cls(feature_extractor=self.model.features, classifier=self.model.head, **common, **kwargs)
            return cls(model=net, criterion=HeadCrossEntropy(self.layout, lambda: self.current_task), **common, **kwargs)

    def evaluated_model(self) -> nn.Module:
        """What the strategy predicts with at evaluation time: our model, or the strategy's view of it.

        GDumb retrains a copy of the initial model (``self.model`` follows it); iCaRL predicts with the
        nearest mean of exemplars once class means exist; BiC corrects the logits of the newest classes.
        """
        if self.strategy is None:
            return self.model
        net = self.strategy.model
        if self.method.strategy == "ICaRL":  # a wrapper in the mode of what it wraps, so evaluation restores that
            return NearestMeanOfExemplars(net).train(net.training)
        self.model = net.model if isinstance(net, TaskLabelled) else net
        if self.method.strategy == "BiC":
            [bic] = [p for p in self.strategy.plugins if isinstance(p, BiCPlugin)]
            if not bic.is_first_experience and bic.bias_layer is not None:
                return BiasCorrected(self.model, bic.bias_layer).train(self.model.training)
        return self.model

    def record(self, phase: str, t: int, epoch: int, train_loss: float) -> list[dict]:
        model = self.evaluated_model()
        trained, self.model = self.model, model
        try:
            return super().record(phase, t, epoch, train_loss)
        finally:
            self.model = trained

    def fit(self, start_task: int = 0) -> None:
        if start_task != 0:
            raise ValueError("an Avalanche run starts from the first task")
        self.record("init", -1, 0, float("nan"))
        experiences = list(self.benchmark.train_stream)
        if self.method.strategy == "ICaRL":  # it reads the class order from nc_benchmark's experiences; ours say it here
            order = SimpleNamespace(n_classes_per_exp=[len(o) for o in self.layout.task_outputs],
                                    classes_order=[c for o in self.layout.task_outputs for c in o])
            for exp in experiences:
                exp.benchmark = order
        joint = self.method.strategy == "JointTraining"
        initial = copy.deepcopy(self.model.state_dict()) if joint else None
        # Avalanche warns of deprecations inside itself, resetting the filters as it does: drop those, pass the rest
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                for t, exp in enumerate(experiences):
                    self.current_task = t
                    if joint:
                        self.model.load_state_dict(initial)
                    if joint or self.strategy is None:
                        self.strategy = self.make_strategy()
                    # reset_optimizer_state: a fresh Adam state per task, as our Trainer's fresh optimiser
                    self.strategy.train(experiences[: t + 1] if joint else exp, eval_streams=[],
                                        reset_optimizer_state=True)
                    self.task_boundary(t)
            finally:
                kept = [w for w in caught if not (issubclass(w.category, DeprecationWarning)
                                                  and f"{os.sep}avalanche{os.sep}" in w.filename)]
        for w in kept:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def task_boundary(self, t: int) -> None:
        [rec] = [p for p in self.strategy.plugins if isinstance(p, _Recorder)]
        self.record("epoch", t, rec.epoch, rec.last_loss)  # the last epoch, after the strategy's end-of-task work
        self.previous_model = frozen_copy(self.evaluated_model())
        if t == 0:
            self.base_model = self.previous_model
        if self.recorder is not None:
            self.recorder.task_done(self, t)


__all__ = ["AvalancheTrainer", "CopyingSIPlugin", "HeadCrossEntropy", "KLRegPlugin", "TaskLabelled", "avalanche_dataset",
           "to_avalanche_benchmark"]
