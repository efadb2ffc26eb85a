"""``kl``: the KL penalty towards a frozen, eval-mode snapshot of the model at the last task boundary.

On the new task's inputs the student's class distribution is held close to the teacher's
(``kl_penalty``), on every output group the teacher knew: each old head in ``task``, the shared
head in ``domain`` (LwF's placement, Li & Hoiem 2016). In ``class``, ``kl_class_outputs``
chooses between two published forms:

- ``active`` (default; van de Ven et al.'s class-incremental LwF, the one their split-MNIST
  figure of 23.9 % measures): the student's softmax over every active output (the classes so
  far, new ones included), the teacher's over the old classes padded with zeros on the new ones
  (``padded_teacher_kl``). Moving probability to the new classes costs penalty.
- ``old``: both softmaxes over the old classes only (LwF's per-head form applied to the old
  block). It is blind to the new classes: a student that copies the teacher's old logits and
  puts +50 on the new ones pays 0. Every direction is defined for it; ``active`` is forward only.

Only the batch's examples of the task being learned are held: composed with ``replay`` (or
``joint``), the examples of older tasks enter the cross-entropy with their labels and not the
KL, as LwF puts its penalty on the new task's inputs; the KL term then means the same as in
``kl`` alone and the teacher cache serves every example it holds. ``kl_on_replayed`` holds them
too (a distillation on the replayed examples as well, with the live teacher).

Where the distributions are taken and over which outputs is the run's objective's
(``objectives.Objective.penalty_kl``): the above for classifiers; for causal LMs the next-token
distribution over the whole vocabulary at every token that carries loss (replayed examples too).

Which sequences a causal LM's KL is taken on is ``kl_inputs``: ``data`` (the task's prompts and target tokens),
``policy`` (the student's own completions of the batch's prompts, drawn in eval mode without gradient from the
loop's generator: on-policy distillation, GKD with lambda = 1) or ``base`` (``kl_samples`` context-free samples of
the reference, from the begin-of-text token alone, drawn once at each task boundary from a generator seeded by
(seed, task), so a resumed run draws the same; no data is read). ``kl_estimator`` takes the exact KL over the
vocabulary at each position (``exact``) or a sampled-token estimator (``kl_estimators``) at the sequence's token
there. Classifiers take only ``data`` and ``exact`` (their one class distribution per input is already exact).
Away from their defaults these options enter the run id; at them they leave it (``resolve_options``).

The teacher is frozen and in eval mode, so where a task's inputs are fixed its outputs on the
task's training set are fixed too: they are computed once at the task boundary (the teacher
cache) and looked up by example index, which makes a KL step cost about as much as a plain one.
"""

from __future__ import annotations

import logging

import torch

from ..options import Option
from ..errors import BadInput
from ..kl_estimators import ESTIMATORS
from ..penalty import DIRECTIONS
from .base import Method as Base, Terms

log = logging.getLogger("forgetting")

KL_INPUTS = ("data", "policy", "base")
SAMPLING = {"kl_samples": ("base",), "kl_sample_temperature": ("policy", "base"),
            "kl_max_new_tokens": ("policy", "base")}  # option -> the --kl-inputs it applies to


class Method(Base):
    name = "kl"
    options = [
        Option("kl_lambda", float, 1.0, "weight of the KL penalty (0 is plain fine-tuning)", minimum=0.0),
        Option("kl_direction", str, "forward", "forward = KL(p_old || p_new), what F.kl_div(log p_new, p_old) computes; "
               "reverse = KL(p_new || p_old); symmetric = their mean", choices=DIRECTIONS),
        Option("temperature", float, 1.0, "softmax temperature T of the penalty (result scaled by T^2; LwF uses 2)",
               minimum=0.0, exclusive_minimum=True),
        Option("kl_class_outputs", str, "active", "class scenario: active = student softmax over every active class, "
               "teacher's padded with zeros on the new ones (van de Ven et al.'s LwF; forward KL only); old = both "
               "softmaxes over the old classes only (blind to probability moved to new classes)",
               choices=("active", "old")),
        Option("kl_on_replayed", bool, False, "composed with replay or joint: also hold the examples of older tasks "
               "in the batch (the KL then averages over every example, the teacher run live on the batch); default: "
               "the new task's examples only, LwF's placement"),
        Option("teacher_cache", bool, True, "compute the frozen teacher's outputs on a task's training set once at "
               "the task boundary instead of at every step (exact for an eval-mode teacher and fixed inputs; "
               "switched off automatically otherwise); never changes the numbers, so not in the run id", hashed=False),
        Option("teacher_cache_mb", float, 2048.0, "largest teacher cache (examples x outputs x 4 bytes; causal LMs: "
               "tokens that carry loss x vocabulary x 4 bytes); above it the live teacher is used", minimum=0.0,
               hashed=False),
        Option("kl_inputs", str, "data", "causal LMs: the sequences the KL is taken on: data = the task's prompts and "
               "target tokens; policy = the student's own completions of the batch's prompts (on-policy distillation, "
               "GKD); base = --kl-samples context-free samples of the reference drawn at each task boundary",
               choices=KL_INPUTS),
        Option("kl_estimator", str, "exact", "causal LMs: exact = the KL over the whole vocabulary at each position; "
               "k1, k2, k3 = the sampled-token estimators (kl_estimators.py) at the sequence's token there",
               choices=ESTIMATORS),
        Option("kl_samples", int, 16, "--kl-inputs base: context-free samples of the reference per task (every one "
               "enters every step's penalty)", minimum=1),
        Option("kl_sample_temperature", float, 1.0, "--kl-inputs policy|base: temperature of the sampled sequences",
               minimum=0.0, exclusive_minimum=True),
        Option("kl_max_new_tokens", int, 32, "--kl-inputs policy|base: the longest sampled continuation, in tokens",
               minimum=1),
    ]
    strength_option = "kl_lambda"
    naive_at_zero = True  # its only effect is a penalty weighted by the strength

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.cache = None  # teacher.TeacherCache of the task being learned, made by the run's objective
        self.base = None  # --kl-inputs base: the reference's context-free samples of the task being learned
        self.base_reference = None  # and the reference's logits on them (a teacher cache), where kept

    def option(self, name):
        return self.hparams.get(name, next(o.default for o in self.options if o.name == name))

    @classmethod
    def resolve_options(cls, options: dict, given: dict, objective_cls) -> None:
        """The KL's inputs and estimator against the objective, in place: BadInput in one line on policy/base or a
        sampled estimator for an objective with no token sequences (classifiers), or a sampling option its
        --kl-inputs does not use; the new options leave ``options`` at their defaults, so today's ids stay."""
        defaults = {o.name: o.default for o in cls.options}
        inputs, estimator = options.get("kl_inputs", "data"), options.get("kl_estimator", "exact")
        if "completion_sampling" not in objective_cls.provides:
            label = objective_cls.label or objective_cls.name
            if inputs != "data":
                raise BadInput(f"--kl-inputs {inputs}: applies to causal LMs only, not to {label} (their KL over the "
                               "one class distribution per input is already exact on the task's inputs); allowed: data")
            if estimator != "exact":
                raise BadInput(f"--kl-estimator {estimator}: applies to causal LMs only, not to {label} (their KL "
                               "over the class distribution is exact); allowed: exact")
        for name, uses in SAMPLING.items():
            if inputs not in uses:
                if given.get(name, defaults[name]) != defaults[name]:
                    raise BadInput(f"--{name.replace('_', '-')}: applies to --kl-inputs {' or '.join(uses)} only "
                                   f"(this run: {inputs})")
                options.pop(name, None)
        if inputs == "data":
            options.pop("kl_inputs", None)
        if estimator == "exact":
            options.pop("kl_estimator", None)

    @staticmethod
    def base_seed(seed: int, task: int) -> int:
        """The seed of task ``task``'s context-free samples: a function of (seed, task) alone, so a run resumed at
        the boundary draws the same and the loop's generator is not touched."""
        return int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(seed * 1_000_003 + task)))

    def before_task(self, trainer, task: int) -> None:
        self.cache = None
        self.base = self.base_reference = None
        if task == 0 or self.hparams["kl_lambda"] == 0:
            return
        if self.option("kl_inputs") == "base":
            self.base = trainer.objective.base_sequences(
                trainer.previous_model, self.option("kl_samples"), self.base_seed(trainer.config.seed, task),
                temperature=self.option("kl_sample_temperature"), max_new_tokens=self.option("kl_max_new_tokens"),
                device=trainer.device)
            log.info("kl inputs for task %d: %d context-free samples of the reference", task, len(self.base))
            length = max(len(t) for t, _ in self.base) - 1
            size_mb = len(self.base) * length * trainer.layout.n_outputs * 4 / 2**20
            if (self.hparams.get("teacher_cache", True) and size_mb <= self.hparams.get("teacher_cache_mb", 2048.0)
                    and not trainer.previous_model.training):
                self.base_reference = trainer.objective.sequences_reference(trainer.model, trainer.previous_model,
                                                                            self.base, trainer.device)
        if self.option("kl_inputs") != "data" or not self.hparams.get("teacher_cache", True):
            return
        reason = self.cache_blocker(trainer)
        data = trainer.stream.tasks[task].train
        objective = trainer.objective
        rows = objective.cache_rows(data)
        size_mb = rows * trainer.layout.n_outputs * 4 / 2**20
        if reason is None and size_mb > self.hparams["teacher_cache_mb"]:
            reason = f"it would take {size_mb:.1f} MB, above --teacher-cache-mb {self.hparams['teacher_cache_mb']:g}"
        if reason is not None:
            log.info("teacher cache off for task %d: %s; using the live teacher", task, reason)
            return
        world = getattr(trainer, "world", None)  # under a launcher the ranks compute the cache in parts; on one
        parts = {"world": world} if world is not None and world.distributed else {}  # process a user's objective
        self.cache = objective.teacher_cache(trainer.previous_model, data, task,  # need not take ``world``
                                             trainer.config.eval_batch_size, trainer.device, **parts)
        log.info("teacher cache for task %d: %d %s x %d outputs (%.2f MB)", task, rows, objective.cache_unit,
                 trainer.layout.n_outputs, size_mb)

    def check_stream(self, stream) -> None:
        if (stream.scenario == "class" and self.hparams.get("kl_class_outputs", "active") == "active"
                and self.hparams["kl_direction"] != "forward"):
            raise BadInput(f"--kl-direction {self.hparams['kl_direction']}: with --kl-class-outputs active (the default "
                           "in the class scenario) only forward is defined, the zero-padded teacher makes the reverse "
                           "KL infinite; allowed: forward, or --kl-class-outputs old")

    @staticmethod
    def cache_blocker(trainer) -> str | None:
        """Why cached teacher outputs would not equal live ones (or cannot be kept), or None."""
        if not trainer.stream.deterministic_inputs:
            return "the stream's training inputs change between visits (augmentation)"
        if trainer.previous_model.training:
            return "the teacher is in train mode (stochastic)"
        return None

    @staticmethod
    def live_teacher(trainer):
        """The frozen teacher's logits on a batch, run without gradient (the objective asks where its cache
        does not hold the batch)."""
        teacher = trainer.previous_model
        assert not teacher.training, "the teacher must be in eval mode"

        def run(batch) -> torch.Tensor:
            with torch.no_grad():
                return teacher(batch.inputs)
        return run

    def teacher_logits(self, trainer, batch, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Classifiers: the frozen teacher's logits on the batch (or its ``rows``), from the cache where it holds
        them, else live."""
        return trainer.objective.teacher_logits(batch, rows, self.live_teacher(trainer), self.cache)

    def penalties(self, trainer, batch, logits, task) -> Terms:
        """The objective's KL between the teacher's and the student's predictive distributions on the batch
        (for classifiers: per example, on the old output groups; for causal LMs: per token that carries loss)."""
        lam = self.hparams["kl_lambda"]
        if task == 0 or lam == 0:
            return {}
        inputs, estimator = self.option("kl_inputs"), self.option("kl_estimator")
        options = {"direction": self.hparams["kl_direction"], "temperature": self.hparams["temperature"]}
        if inputs == "data":
            extra = {} if estimator == "exact" else {"estimator": estimator}  # classifiers take no estimator
            kl = trainer.objective.penalty_kl(
                logits, batch, task, self.live_teacher(trainer), self.cache, **options, **extra,
                class_outputs=self.hparams.get("kl_class_outputs", "active"),
                on_replayed=self.hparams.get("kl_on_replayed", False))
            return {"kl": (kl, lam)}
        model = trainer.model
        if inputs == "policy":
            was_training = model.training
            model.eval()
            with torch.no_grad():
                seqs = trainer.objective.policy_sequences(model, batch, trainer.generator,
                                                          temperature=self.option("kl_sample_temperature"),
                                                          max_new_tokens=self.option("kl_max_new_tokens"))
            model.train(was_training)
        else:
            seqs = self.base
        kl = trainer.objective.sequences_kl(model, trainer.previous_model, seqs, estimator=estimator,
                                            device=batch.inputs["input_ids"].device,
                                            reference=self.base_reference if inputs == "base" else None, **options)
        return {"kl": (kl, lam)}

    def after_task(self, trainer, task: int) -> None:
        self.cache = None
        self.base = self.base_reference = None
