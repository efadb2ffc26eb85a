"""Forgetting curves for a TRL run: ``ForgettingCallback`` measures the old tasks and the KL drift while a
TRL trainer trains (``GRPOTrainer``, ``SFTTrainer``, ``DPOTrainer``, or any ``transformers.Trainer`` of a
causal LM) and writes a harness run directory: ``metrics.csv``, ``manifest.json``, ``config.json`` and,
at the end, the report's figures (``forgetting.plot.write_report``).

    cb = ForgettingCallback(model, old_tasks={"sentiment": old_pairs}, new_task=("arithmetic", new_pairs))
    GRPOTrainer(model=model, ..., callbacks=[cb]).train()   # results/<run id>/...

A task is prompt/response pairs: a list of ``(prompt, response)`` or TRL's prompt-completion data (a
``datasets.Dataset`` or a dict with ``prompt`` and ``completion`` columns of strings). Each is evaluated
as the harness evaluates a completion task of a causal LM (``objectives/causal_lm/evaluate.py``): the
sequence ``<bos> prompt response <eos>``; NLL, token accuracy, exact match and, where a task has at most
``max_choices`` distinct responses, answer accuracy (the response of highest likelihood among them).

The rows mean what a harness run's rows mean: the run is the harness's ``--no-train-base`` run of
``--text-tasks OLD_1 NEW --eval-only-tasks OLD_2 ...``. Task 0 is the first old task, whose "after
task 0" rows (and ``init`` rows) are the model as given, at step 0; task 1 is the new task, trained by
the trainer; the other old tasks are measured and never trained (``eval_only`` = 1). ``kl_base`` is
the harness's: the exact per-token KL(p_base ‖ p_current) over the vocabulary at each task's response
tokens, p_base a frozen copy of the model taken when the callback is made (before the trainer patches
the model's forward: see ``KLRegularizedSFTTrainer``), never trained, in eval mode, without gradients.

When: at the trainer's training logs (every ``logging_steps``), so the trainer's own KL of that log sits
in the same rows (``trainer_kl``, ``trainer_kl_estimator``: ``trl_kl``); with ``eval_steps=N`` at every
N-th optimiser step and the last instead, where the callback makes the trainer log. Not at the trainer's own
evaluations: those run on its ``eval_dataset``, and its KL is logged with training. At the end of
training the last rows are the task boundary (``phase`` epoch); the figures follow. ``train_loss`` is
the trainer's logged ``loss``: its mean over the steps since its previous log. A single process (or
DDP: rank 0 evaluates and writes); a run resumed from a trainer checkpoint is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from transformers import TrainerCallback

from ..config import Component, RunConfig
from ..errors import BadInput
from ..teacher import frozen_copy
from .trl_kl import trainer_kl

# TrainingArguments that say where and how a run is watched or saved, not what it computes: the
# config's unhashed settings (every other argument is in the run id)
NOT_HASHED = ("output_dir", "logging_", "run_name", "report_to", "push_to_hub", "hub_", "save_", "disable_tqdm",
              "resume_from_checkpoint", "overwrite_output_dir", "trackio", "project", "eval_", "per_device_eval",
              "dataloader_", "log_", "include_", "prediction_loss_only", "use_cpu", "local_rank", "ddp_")


def task_pairs(name: str, data) -> tuple[list[str], list[str]]:
    """(prompts, responses) of a task given as (prompt, response) pairs or prompt/completion columns."""
    if hasattr(data, "column_names") or isinstance(data, Mapping):
        columns = list(data.column_names if hasattr(data, "column_names") else data.keys())
        if "prompt" not in columns or "completion" not in columns:
            raise BadInput(f"task {name!r}: columns {columns}, allowed: prompt and completion (TRL's prompt-completion "
                           "format), or a list of (prompt, response) pairs")
        prompts, responses = list(data["prompt"]), list(data["completion"])
    else:
        try:
            pairs = [tuple(p) for p in data]
        except TypeError:
            raise BadInput(f"task {name!r}: {type(data).__name__}, allowed: a list of (prompt, response) pairs or "
                           "prompt/completion columns") from None
        if any(len(p) != 2 for p in pairs):
            raise BadInput(f"task {name!r}: an item is not a (prompt, response) pair, allowed: pairs of strings")
        prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    if not prompts:
        raise BadInput(f"task {name!r} has no examples, allowed: at least one (prompt, response) pair")
    for what, texts in (("prompt", prompts), ("response", responses)):
        bad = next((t for t in texts if not isinstance(t, str)), None)
        if bad is not None:
            raise BadInput(f"task {name!r}: a {what} is {type(bad).__name__}, allowed: strings (conversational "
                           "data: apply the chat template first, tokenizer.apply_chat_template(..., tokenize=False))")
    if any(not r for r in responses):
        raise BadInput(f"task {name!r}: an empty response, allowed: responses of at least one character")
    return prompts, responses


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _method_name(args) -> str:
    """trl-grpo, trl-sft, trl-dpo (from the config class: GRPOConfig, ...); hf-trainer for plain TrainingArguments."""
    name = type(args).__name__
    return "hf-trainer" if name == "TrainingArguments" else "trl-" + name.removesuffix("Config").lower()


class ForgettingCallback(TrainerCallback):
    """Evaluates ``old_tasks`` and ``new_task`` and the KL drift to a frozen copy of ``model`` during a
    Trainer's training, writing the harness's rows, manifest and figures (see the module's docstring).

    ``model``: the loaded model the trainer will train (copied now, before the trainer patches it).
    ``old_tasks``: {name: pairs}, what the model could do before; ``new_task``: (name, pairs), held-out
    examples of what the trainer teaches (the KL on its inputs is the predictor of Shenfeld et al. 2025).
    ``tokenizer``: default the trainer's ``processing_class``. ``eval_steps``: evaluate every this many
    optimiser steps (default: at every training log). ``figures``: write the report (``report/`` in the
    run directory) at the end, as ``figure_formats`` (PNG: a look; ``python -m forgetting.plot RUN_DIR``
    writes the paper's PDF and SVG).
    """

    def __init__(self, model: nn.Module, old_tasks: Mapping[str, Any], new_task: tuple[str, Any], *,
                 tokenizer=None, results_dir: str | Path = "results", benchmark: str = "trl",
                 eval_steps: int | None = None, eval_batch_size: int = 32, eval_subset: int = 0,
                 max_seq_len: int | None = None, max_choices: int = 16, figures: bool = True,
                 figure_formats: str | Sequence[str] = "png"):
        if not isinstance(model, nn.Module):
            raise BadInput(f"ForgettingCallback: model {model!r} is not a loaded model, allowed: the nn.Module the "
                           "trainer trains (its frozen copy, taken now, is the base of the KL drift)")
        if not isinstance(old_tasks, Mapping) or not old_tasks:
            raise BadInput(f"ForgettingCallback: old_tasks {old_tasks!r}, allowed: a dict {{name: pairs}} of at least "
                           "one task")
        if not (isinstance(new_task, tuple) and len(new_task) == 2 and isinstance(new_task[0], str)):
            raise BadInput(f"ForgettingCallback: new_task of type {type(new_task).__name__}, allowed: a (name, pairs) "
                           "tuple")
        if eval_steps is not None and (not isinstance(eval_steps, int) or eval_steps < 1):
            raise BadInput(f"ForgettingCallback: eval_steps {eval_steps!r}, allowed: an integer at least 1, or None "
                           "(at every training log)")
        names = [str(n) for n in old_tasks] + [new_task[0]]
        if len(set(names)) != len(names):
            raise BadInput(f"ForgettingCallback: a task name is given twice in {names}, allowed: distinct names")
        old = [(str(n), *task_pairs(str(n), d)) for n, d in old_tasks.items()]
        # the harness's order: the base task, the new task, then the tasks measured only
        self.tasks = [old[0], (new_task[0], *task_pairs(new_task[0], new_task[1])), *old[1:]]
        self.model = model
        self.reference = frozen_copy(model)
        self.tokenizer = tokenizer
        self.results_dir, self.benchmark = str(results_dir), benchmark
        self.eval_steps, self.eval_batch_size, self.eval_subset = eval_steps, eval_batch_size, eval_subset
        self.max_seq_len, self.max_choices = max_seq_len, max_choices
        self.figures, self.figure_formats = figures, figure_formats
        self.penalty: dict | None = None  # KLRegularizedSFTTrainer's penalty, announced by the trainer itself
        self.writer = None
        self.stream = self.evaluator = None
        self.run_dir: Path | None = None
        self._last_rows: list[dict] = []
        self._ctx: dict = {}

    # --- told by KLPenaltyMixin, which knows its penalty (the callback sees only args and logs) ----------
    def trainer_penalty(self, direction: str, temperature: float, kl_lambda: float) -> None:
        self.penalty = {"direction": direction, "temperature": temperature, "kl_lambda": kl_lambda}

    # --- the run -------------------------------------------------------------------------------
    def _stream(self, tokenizer):
        from ..objectives.causal_lm.data import OPTIONS, lm_stream
        from ..streams.text import RawTask, TokenizerMaker

        tok = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor holds its tokenizer
        if tok is None or not callable(tok):
            raise BadInput("ForgettingCallback: no tokenizer, allowed: tokenizer=... or a trainer with a "
                           "processing_class")
        if tok.pad_token_id is None or tok.eos_token_id is None:
            raise BadInput("ForgettingCallback: the tokenizer has no pad or no eos token, allowed: a tokenizer with "
                           "both (e.g. tokenizer.pad_token = tokenizer.eos_token)")
        context = next((getattr(self.model.config, k) for k in ("n_positions", "max_position_embeddings")
                        if isinstance(getattr(self.model.config, k, None), int)), 1024)
        self._seq_len = int(self.max_seq_len or min(context, 1024))
        lm_options = {o.name: o.default for o in OPTIONS}
        lm_options.update(lm_task="completion", lm_max_choices=self.max_choices)
        maker = TokenizerMaker(lambda texts: (tok, getattr(tok, "name_or_path", "") or "tokenizer"), lm_stream,
                               lm_options)
        raw = [RawTask(name, [], [], prompts, responses, sorted(set(responses)), eval_only=k >= 2)
               for k, (name, prompts, responses) in enumerate(self.tasks)]
        return lm_stream(self.benchmark, "domain", raw, {"tokenizer": maker, "max_seq_len": self._seq_len},
                         {"lm_pairs": True, "source": "ForgettingCallback"})

    def _config(self, args, state) -> RunConfig:
        settings = {k: v for k, v in args.to_dict().items() if k.startswith(NOT_HASHED)}
        options = {k: v for k, v in args.to_dict().items() if k not in settings}
        if self.penalty is not None:
            options["kl_penalty"] = self.penalty
        cfg = self.model.config
        stream = Component(self.benchmark, {"scenario": "domain", "text_tasks": [n for n, *_ in self.tasks[:2]],
                                            "eval_only_tasks": [n for n, *_ in self.tasks[2:]],
                                            "max_seq_len": self._seq_len, "lm_max_choices": self.max_choices})
        model = Component(f"causal:{cfg.name_or_path}" if cfg.name_or_path else f"causal:{type(self.model).__name__}",
                          {"architecture": type(self.model).__name__, "config": _digest(cfg.to_dict())})
        method = Component(_method_name(args) + ("+kl" if self.penalty else ""), options, settings)
        loop = {"seed": args.seed, "epochs": int(state.num_train_epochs), "max_steps": int(state.max_steps),
                "batch_size": args.per_device_train_batch_size, "lr": args.learning_rate,
                "eval_every": self.eval_steps or int(state.logging_steps), "eval_batch_size": self.eval_batch_size,
                "eval_subset": self.eval_subset, "train_base": False}
        return RunConfig(stream=stream, model=model, method=method, loop=loop,
                         data_fingerprint={n: _digest([p, r]) for n, p, r in self.tasks},
                         results_dir=self.results_dir, progress=False)

    def _live(self, model) -> nn.Module:
        """The model the trainer trains, which must hold the one the callback copied (itself, or wrapped: PEFT)."""
        live = model if model is not None else self.model
        if not any(m is self.model for m in live.modules()):
            raise BadInput("ForgettingCallback: the trainer trains another model than the one given to the callback, "
                           "allowed: the same loaded model (ForgettingCallback(model, ...), Trainer(model=model, ...))")
        return live

    def _evaluate(self, model, with_base: bool) -> list[dict]:
        from ..models.causal import CausalLM

        live = self._live(model)
        device = next(live.parameters()).device
        self.evaluator.device = device
        if next(self.reference.parameters()).device != device:
            self.reference.to(device)
        modes = [(m, m.training) for m in live.modules()]  # evaluated in eval mode, then each module as it was
        student = CausalLM(live, None)  # model(inputs) -> logits
        base = CausalLM(self.reference, None).eval() if with_base else None
        try:
            rows = self.evaluator.evaluate(student, base)
        finally:
            for m, training in modes:
                m.training = training
        for r in rows:
            if r["eval_task"] >= self.stream.n_learned:
                r["eval_only"] = 1
        return rows

    def _add(self, rows: list[dict], **ctx) -> list[dict]:
        rows = [{**self._ctx, **ctx, **r, "wall_time": self.writer.elapsed()} for r in rows]
        self.writer.add_rows(rows)
        return rows

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if state.global_step != 0:
            raise BadInput(f"ForgettingCallback: the trainer resumes at step {state.global_step}, allowed: a run from "
                           "step 0 (its base is the model before any step)")
        live = self._live(model)
        self._last_rows = []  # a second train() of the same callback starts a run of its own
        from ..objectives.causal_lm.evaluate import LMEvaluator
        from ..results import RunWriter

        self.stream = self._stream(self.tokenizer if self.tokenizer is not None else processing_class)
        self.evaluator = LMEvaluator(self.stream, self.eval_batch_size, torch.device("cpu"), subset=self.eval_subset)
        config = self._config(args, state)
        lam = args.beta if hasattr(args, "beta") else (self.penalty or {}).get("kl_lambda", 0.0)
        self._ctx = {"run_id": config.run_id, "benchmark": self.benchmark, "scenario": "domain",
                     "method": config.method.name, "lambda": float(lam), "seed": args.seed}
        self.writer = RunWriter(config, str(next(live.parameters()).device), extra_manifest={
            "objective": "causal-lm", "report_measures": [list(m) for m in _report_measures()],
            "trainer": {"args": type(args).__name__, "kl_base": "exact per-token KL(p_base || p_current) at each "
                        "task's response tokens; p_base a frozen copy of the model before training"}}).open()
        self.run_dir = self.writer.dir
        rows = self._evaluate(model, with_base=False)  # as the harness's --no-train-base: no KL before the boundary
        self._add(rows, phase="init", trained_task=-1, epoch=0, global_step=0, train_loss=float("nan"))
        self._add(rows, phase="epoch", trained_task=0, epoch=1, global_step=0, train_loss=float("nan"))
        self.writer.task_done(None, 0)

    def on_step_end(self, args, state, control, **kwargs):
        if self.eval_steps and state.global_step % self.eval_steps == 0:
            control.should_log = True  # the trainer logs at our evaluation: its KL is in the same rows
        return control

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not state.is_world_process_zero or self.writer is None or "loss" not in (logs or {}):
            return  # not a training log (an evaluation's, the end-of-training summary)
        if self.eval_steps and state.global_step % self.eval_steps and state.global_step != state.max_steps:
            return  # not an evaluation step, nor the last (whose log the task boundary's rows carry)
        if self._last_rows and self._last_rows[0]["global_step"] == state.global_step:
            return
        kl, estimator = trainer_kl(args, logs, self.penalty)
        self._last_rows = self._add(self._evaluate(model, with_base=True), phase="step", trained_task=1,
                                    epoch=max(1, math.ceil(state.epoch or 0)), global_step=state.global_step,
                                    train_loss=float(logs["loss"]), trainer_kl=kl, trainer_kl_estimator=estimator)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or self.writer is None:
            return
        epoch = max(1, math.ceil(state.epoch or 0))
        if self._last_rows and self._last_rows[0]["global_step"] == state.global_step:
            self._add([{**r, "phase": "epoch", "epoch": epoch} for r in self._last_rows])  # the same model: its rows
        else:
            self._add(self._evaluate(model, with_base=True), phase="epoch", trained_task=1, epoch=epoch,
                      global_step=state.global_step, train_loss=float("nan"), trainer_kl=float("nan"),
                      trainer_kl_estimator="")
        self.writer.task_done(None, 1)
        self.writer.update(trainer_log=[{k: v for k, v in h.items() if isinstance(v, (int, float, str))}
                                        for h in state.log_history])
        self.writer.finish("complete")
        if self.figures:
            from ..plot import write_report

            write_report([self.run_dir], self.run_dir / "report", formats=self.figure_formats)


def _report_measures():
    from ..objectives.causal_lm import CausalLM

    return CausalLM.report_measures


__all__ = ["ForgettingCallback", "task_pairs"]
