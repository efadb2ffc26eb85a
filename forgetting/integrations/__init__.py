"""Bridges to other libraries: Avalanche (``integrations.avalanche``) and the Hugging Face
``Trainer`` (``integrations.hf``).

This module stays light on purpose: it names the Avalanche strategies that ``--method
avalanche-NAME`` runs and declares their options, so the CLI and the registry can list them
without importing Avalanche (which takes seconds). Each is a ``Method`` (the same protocol: options,
strength, ``needs``, ``check_stream``, ``runner``) whose hooks are never called: it declares the
``avalanche`` runner (``integrations.avalanche.AvalancheTrainer``), which reads its ``strategy`` and
``strategy_kwargs`` and runs Avalanche's own strategy on our stream and model. Avalanche's
strategies train classifiers: they need the class distribution of the classification objective.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import BadInput
from ..methods.base import Method
from ..options import Option


class AvalancheMethod(Method):
    """An Avalanche strategy run on our stream and model, recorded into our results schema."""

    name: ClassVar[str] = "avalanche-naive"
    strategy: ClassVar[str] = "Naive"  # class name in avalanche.training
    runner: ClassVar[str] = "avalanche"  # Avalanche runs the whole loop: never composed with '+'
    needs = frozenset({"class_distribution"})
    needs_why = "Avalanche's strategies train classifiers"
    options: ClassVar[list[Option]] = []
    scenarios: ClassVar[tuple[str, ...]] = ("task", "domain", "class")  # where the strategy is defined
    multi_head: ClassVar[bool] = True  # in ``task``, hand Avalanche our model as multi-head (TaskLabelled)

    def check_stream(self, stream) -> None:
        """BadInput where Avalanche cannot run the strategy on ``stream``: text inputs, a scenario it is not
        defined for, train-time augmentation."""
        if stream.input_kind != "tensor":
            raise BadInput(f"--method {self.name}: Avalanche strategies need tensor inputs, "
                           f"stream {stream.name!r} gives {stream.input_kind}")
        if stream.scenario not in self.scenarios:
            raise BadInput(f"--method {self.name}: defined for the {' and '.join(self.scenarios)} "
                           f"scenario only, not {stream.scenario!r}")
        if not stream.deterministic_inputs:
            raise BadInput(f"--method {self.name}: Avalanche strategies train on a fixed copy of each task's "
                           "data, so train-time augmentation (--augment) cannot reach them; run without --augment")

    def strategy_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the Avalanche strategy's constructor, from our hyper-parameters."""
        return {}

    def state_dict(self) -> dict:
        """Nothing for the task-boundary checkpoint: the strategy's state lives in Avalanche's plugins, and an
        Avalanche run starts again rather than resume."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class AvalancheNaive(AvalancheMethod):
    name, strategy = "avalanche-naive", "Naive"


class AvalancheEWC(AvalancheMethod):
    name, strategy = "avalanche-ewc", "EWC"
    options = [
        Option("av_ewc_lambda", float, 1.0, "Avalanche EWC: ewc_lambda, weight of the penalty", minimum=0.0),
        Option("av_ewc_mode", str, "separate", "Avalanche EWC: mode (separate: one penalty per old experience; "
               "online: one decayed sum)", choices=("separate", "online")),
        Option("av_ewc_decay", float, 1.0, "Avalanche EWC: decay_factor of the online mode", minimum=0.0, maximum=1.0),
    ]
    strength_option = "av_ewc_lambda"

    def __init__(self, **hparams):
        super().__init__(**hparams)
        if hparams["av_ewc_mode"] != "online" and hparams["av_ewc_decay"] != 1.0:
            raise BadInput(f"--av-ewc-decay {hparams['av_ewc_decay']:g}: applies only with --av-ewc-mode online")

    def strategy_kwargs(self):
        h = self.hparams
        online = h["av_ewc_mode"] == "online"
        return {"ewc_lambda": h["av_ewc_lambda"], "mode": h["av_ewc_mode"],
                "decay_factor": h["av_ewc_decay"] if online else None}


class AvalancheSI(AvalancheMethod):
    name, strategy = "avalanche-si", "SynapticIntelligence"
    options = [
        Option("av_si_lambda", float, 1.0, "Avalanche SynapticIntelligence: si_lambda", minimum=0.0),
        Option("av_si_eps", float, 1e-7, "Avalanche SynapticIntelligence: eps, damping", minimum=0.0, exclusive_minimum=True),
    ]
    strength_option = "av_si_lambda"

    def strategy_kwargs(self):
        return {"si_lambda": self.hparams["av_si_lambda"], "eps": self.hparams["av_si_eps"]}


class AvalancheLwF(AvalancheMethod):
    name, strategy = "avalanche-lwf", "LwF"
    options = [
        Option("av_lwf_alpha", float, 1.0, "Avalanche LwF: alpha, weight of the distillation loss (Avalanche does not "
               "multiply by T^2: alpha = kl_lambda * T^2 matches our kl)", minimum=0.0),
        Option("av_lwf_temperature", float, 2.0, "Avalanche LwF: temperature", minimum=0.0, exclusive_minimum=True),
    ]
    strength_option = "av_lwf_alpha"

    def strategy_kwargs(self):
        return {"alpha": self.hparams["av_lwf_alpha"], "temperature": self.hparams["av_lwf_temperature"]}


class AvalancheGEM(AvalancheMethod):
    name, strategy = "avalanche-gem", "GEM"
    options = [
        Option("av_gem_patterns", int, 256, "Avalanche GEM: patterns_per_exp, memory per experience", minimum=1),
        Option("av_gem_strength", float, 0.5, "Avalanche GEM: memory_strength (gamma)", minimum=0.0),
    ]
    strength_option = "av_gem_strength"

    def strategy_kwargs(self):
        return {"patterns_per_exp": self.hparams["av_gem_patterns"], "memory_strength": self.hparams["av_gem_strength"]}


class AvalancheAGEM(AvalancheMethod):
    name, strategy = "avalanche-agem", "AGEM"
    options = [
        Option("av_agem_patterns", int, 256, "Avalanche AGEM: patterns_per_exp, memory per experience", minimum=1),
        Option("av_agem_sample", int, 64, "Avalanche AGEM: sample_size, memory patterns per reference gradient",
               minimum=1),
    ]

    def strategy_kwargs(self):
        return {"patterns_per_exp": self.hparams["av_agem_patterns"], "sample_size": self.hparams["av_agem_sample"]}


class AvalancheReplay(AvalancheMethod):
    name, strategy = "avalanche-replay", "Replay"
    options = [Option("av_mem_size", int, 200, "Avalanche Replay: mem_size, examples in the buffer", minimum=1)]

    def strategy_kwargs(self):
        return {"mem_size": self.hparams["av_mem_size"]}


class AvalancheMAS(AvalancheMethod):
    name, strategy = "avalanche-mas", "MAS"
    options = [
        Option("av_mas_lambda", float, 1.0, "Avalanche MAS: lambda_reg, weight of the penalty", minimum=0.0),
        Option("av_mas_alpha", float, 0.5, "Avalanche MAS: alpha, weight of the old importance", minimum=0.0, maximum=1.0),
    ]
    strength_option = "av_mas_lambda"

    def strategy_kwargs(self):
        return {"lambda_reg": self.hparams["av_mas_lambda"], "alpha": self.hparams["av_mas_alpha"]}


class AvalancheJoint(AvalancheMethod):
    """JointTraining: after task t, a model trained from the initial weights on tasks 0..t together."""

    name, strategy = "avalanche-joint", "JointTraining"


class AvalancheDER(AvalancheMethod):
    """DER / DER++ (Buzzega et al. 2020) as Avalanche implements it: a class-balanced buffer whose logits are
    computed after each experience (not at the step), one joint forward pass, unmasked cross-entropy."""

    name, strategy = "avalanche-der", "DER"
    multi_head = False  # Avalanche's DER computes the buffer's logits with model(x): one output layer
    options = [
        Option("av_der_mem_size", int, 200, "Avalanche DER: mem_size, examples in the buffer", minimum=1),
        Option("av_der_alpha", float, 0.1, "Avalanche DER: alpha, weight of the MSE to the stored logits", minimum=0.0),
        Option("av_der_beta", float, 0.5, "Avalanche DER: beta, weight of the buffer's cross-entropy (0: DER, "
               "above 0: DER++)", minimum=0.0),
        Option("av_der_batch_size_mem", int, 0, "Avalanche DER: batch_size_mem (0: --batch-size)", minimum=0),
    ]
    strength_option = "av_der_alpha"

    def strategy_kwargs(self):
        h = self.hparams
        return {"mem_size": h["av_der_mem_size"], "alpha": h["av_der_alpha"], "beta": h["av_der_beta"],
                "batch_size_mem": h["av_der_batch_size_mem"] or None}


class AvalancheERACE(AvalancheMethod):
    """ER-ACE (Caccia et al. 2022): replay with the asymmetric cross-entropy (new examples compete only
    among the classes of their batch)."""

    name, strategy = "avalanche-er-ace", "ER_ACE"
    options = [
        Option("av_erace_mem_size", int, 200, "Avalanche ER_ACE: mem_size, examples in the buffer", minimum=1),
        Option("av_erace_batch_size_mem", int, 10, "Avalanche ER_ACE: batch_size_mem, buffer examples per step",
               minimum=1),
    ]

    def strategy_kwargs(self):
        return {"mem_size": self.hparams["av_erace_mem_size"], "batch_size_mem": self.hparams["av_erace_batch_size_mem"]}


class AvalancheICaRL(AvalancheMethod):
    """iCaRL (Rebuffi et al. 2017): herding exemplars, distillation, nearest-mean-of-exemplars classifier.
    Class-incremental only; needs a model split into ``features`` and ``head`` (mlp, resnet18). Rows are the
    nearest-mean classifier's predictions once class means exist (after the first task), the head's before."""

    name, strategy = "avalanche-icarl", "ICaRL"
    scenarios = ("class",)
    options = [
        Option("av_icarl_memory", int, 200, "Avalanche ICaRL: memory_size, exemplars over all classes (fixed_memory)",
               minimum=1),
    ]

    def strategy_kwargs(self):
        return {"memory_size": self.hparams["av_icarl_memory"], "buffer_transform": None, "fixed_memory": True}


class AvalancheGDumb(AvalancheMethod):
    """GDumb (Prabhu et al. 2020): a class-balanced buffer; at every task the model is retrained from its
    initial weights on the buffer alone."""

    name, strategy = "avalanche-gdumb", "GDumb"
    options = [Option("av_gdumb_mem_size", int, 200, "Avalanche GDumb: mem_size, examples in the buffer", minimum=1)]

    def strategy_kwargs(self):
        return {"mem_size": self.hparams["av_gdumb_mem_size"]}


class AvalancheBiC(AvalancheMethod):
    """BiC (Wu et al. 2019): replay and distillation, then a two-parameter bias correction of the newest
    classes' logits fitted on a held-out part of the buffer. Class-incremental only."""

    name, strategy = "avalanche-bic", "BiC"
    scenarios = ("class",)
    options = [
        Option("av_bic_mem_size", int, 200, "Avalanche BiC: mem_size, examples in the buffer", minimum=1),
        Option("av_bic_val_percentage", float, 0.1, "Avalanche BiC: val_percentage, share of the buffer held out "
               "for the bias correction", minimum=0.0, exclusive_minimum=True, maximum=0.9),
        Option("av_bic_temperature", int, 2, "Avalanche BiC: T, distillation temperature", minimum=1),
        Option("av_bic_stage2_epochs", int, 200, "Avalanche BiC: stage_2_epochs, epochs of the bias correction",
               minimum=1),
        Option("av_bic_lr", float, 0.1, "Avalanche BiC: lr of the bias correction (SGD, momentum 0.9)", minimum=0.0,
               exclusive_minimum=True),
    ]

    def strategy_kwargs(self):
        h = self.hparams
        return {"mem_size": h["av_bic_mem_size"], "val_percentage": h["av_bic_val_percentage"],
                "T": h["av_bic_temperature"], "stage_2_epochs": h["av_bic_stage2_epochs"], "lamb": -1,
                "lr": h["av_bic_lr"]}


AVALANCHE_METHODS: dict[str, type[AvalancheMethod]] = {
    c.name: c for c in (AvalancheNaive, AvalancheEWC, AvalancheSI, AvalancheLwF, AvalancheGEM, AvalancheAGEM,
                        AvalancheReplay, AvalancheMAS, AvalancheJoint, AvalancheDER, AvalancheERACE, AvalancheICaRL,
                        AvalancheGDumb, AvalancheBiC)
}

__all__ = ["AVALANCHE_METHODS", "AvalancheMethod"]
