"""Our KL penalty in the Hugging Face ``Trainer``: fine-tune a sequence classifier while holding its
class distribution close to a frozen reference model (usually the model before fine-tuning).

    trainer = KLRegularizedTrainer(model=model, args=args, train_dataset=ds, kl_lambda=0.5)
    trainer.train()   # logs "ce" and "kl" beside "loss" at every logging step

The loss of a batch is the model's own loss (cross-entropy for single-label classification,
label smoothing if the arguments ask for it) plus ``kl_lambda * kl_penalty(student, reference)``,
the reference run in eval mode under ``torch.no_grad`` on the same inputs. The penalty reads
the logits as one categorical distribution per example (single-label sequence classification,
logits [batch, classes]), or for a causal LM (logits [batch, length, vocabulary]) one per token:
``token_kl_penalty`` at every position whose next token carries loss, i.e. whose label is not
-100 (put -100 on prompt tokens and padding: ``DataCollatorForSeq2Seq(tokenizer,
label_pad_token_id=-100)`` pads them so). The data loss is then the model's own causal-LM loss.

With TRL's ``SFTTrainer``, ``forgetting.integrations.trl.KLRegularizedSFTTrainer`` adds the same
penalty (``KLPenaltyMixin`` holds the code both share: the reference, its logits, the KL term, the logs).

Under ``accelerate launch`` (DDP: each process trains on its part of the global batch, gradients averaged)
a step gives the update of one process at the same global batch: where the Trainer counts the step's loss
units over every process and accumulated batch (``num_items_in_batch``: examples, or the tokens that carry
loss), a batch's mean loss is weighted by its share of them (``batch_weight``), so the ranks' averaged
gradients are those of the mean over the whole step, whatever the ranks' token counts. The reference is
never wrapped: every rank keeps its own frozen copy, in eval mode, under ``torch.no_grad``. The "ce" and
"kl" logs are summed over the ranks as the loss is (tests/test_integrations_launched.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from ..objectives.causal_lm.tokens import loss_mask, shifted
from ..penalty import check_penalty_options, kl_penalty, token_kl_penalty
from ..teacher import freeze, frozen_copy


class KLPenaltyMixin:
    """The KL penalty's part of a Hugging Face ``Trainer`` subclass (put it first in the bases):
    the frozen reference model, its logits, the KL term and the "ce"/"kl" logs.

    ``ref_model``: a separate model with the same label space (frozen in place: eval mode, no
    gradients); by default a frozen copy of ``model`` as it is when the trainer is built.
    ``kl_direction``: forward = KL(p_ref || p_model) (what ``F.kl_div(log p_model, p_ref)``
    computes), reverse, or symmetric; ``temperature`` T softens both and scales by T^2.
    """

    def __init__(self, *args, ref_model: nn.Module | None = None, kl_lambda: float = 1.0,
                 kl_direction: str = "forward", temperature: float = 1.0, **kwargs):
        check_penalty_options(kl_direction, temperature)
        if not (isinstance(kl_lambda, (int, float)) and math.isfinite(kl_lambda) and kl_lambda >= 0):
            raise ValueError(f"kl_lambda must be a finite number at least 0, got {kl_lambda!r}")
        super().__init__(*args, **kwargs)
        if ref_model is None:
            ref_model = frozen_copy(self.model)
        elif ref_model is self.model or {id(p) for p in ref_model.parameters()} & {id(p) for p in self.model.parameters()}:
            raise ValueError("ref_model shares parameters with the model being trained; pass a copy "
                             "(copy.deepcopy(model)) or leave ref_model out to snapshot the model")
        self.ref_model = freeze(ref_model)
        self.kl_lambda = float(kl_lambda)
        self.kl_direction = kl_direction
        self.temperature = float(temperature)
        self._part_sums: dict[str, torch.Tensor] = {}
        self._parts_logged_at = 0  # the optimiser step of the last log
        self._weighted = False  # whether the last loss was weighted by num_items_in_batch
        for cb in self.callback_handler.callbacks:  # a ForgettingCallback names the KL this trainer logs
            if callable(getattr(cb, "trainer_penalty", None)):
                cb.trainer_penalty(self.kl_direction, self.temperature, self.kl_lambda)

    @property
    def loss_is_scaled_for_ga(self) -> bool:
        """What the Trainer reads after ``compute_loss``: a loss weighted by ``num_items_in_batch`` already holds
        the accumulation (not divided again); a batch mean is divided by the accumulation steps."""
        return self._weighted

    def reference_logits(self, inputs: dict[str, Any], device: torch.device) -> torch.Tensor:
        ref = self.ref_model
        if ref.training:  # something called .train() on it: a teacher runs in eval mode
            ref.eval()
        if next(ref.parameters()).device != device:
            ref.to(device)
        with torch.no_grad():
            return ref(**inputs).logits

    def penalty(self, logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The KL term: per example for classifiers; for causal LMs per token whose label is not -100."""
        options = {"direction": self.kl_direction, "temperature": self.temperature}
        if logits.dim() == 2:
            return kl_penalty(logits, ref_logits, **options)
        if labels is None or labels.shape != logits.shape[:2]:
            raise ValueError(f"{type(self).__name__} needs causal-LM labels [batch, length] (-100 where no loss is "
                             "taken) to know which tokens the penalty holds")
        return token_kl_penalty(shifted(logits, labels)[0], shifted(ref_logits, labels)[0], loss_mask(labels),
                                **options)

    def batch_weight(self, units: torch.Tensor, num_items_in_batch) -> torch.Tensor | float:
        """What a batch's mean loss is multiplied by: its ``units`` (examples, or tokens that carry loss) over the
        step's count ``num_items_in_batch`` (every accumulated batch, and every process when
        ``average_tokens_across_devices``, the default), times ``processes_averaged``, so the step's gradient is
        that of its mean over all of them; 1 without a count (the Trainer then divides the loss by the
        accumulation steps itself)."""
        if num_items_in_batch is None:
            return 1.0
        count = torch.as_tensor(num_items_in_batch, device=units.device).clamp(min=1)
        return units / count * self.processes_averaged(num_items_in_batch)

    def processes_averaged(self, num_items_in_batch) -> int:
        """The factor for a loss summed over a count of every process's units, whose gradients DDP averages:
        the number of processes (as Trainer.compute_loss and SFTTrainer scale theirs), else 1."""
        if num_items_in_batch is None or not self.args.average_tokens_across_devices:
            return 1
        return self.accelerator.num_processes // self.get_tp_size()

    def record_parts(self, model: nn.Module, ce: torch.Tensor, kl: torch.Tensor) -> None:
        """Keep a training batch's cross-entropy and KL as they enter its loss (weighted by ``batch_weight``, or
        a mean the Trainer divides by the accumulation steps) for the next log."""
        if model.training:
            scale = 1.0 if self._weighted else 1.0 / self.current_gradient_accumulation_steps
            for name, value in (("ce", ce), ("kl", kl)):
                v = value.detach().float() * scale
                self._part_sums[name] = self._part_sums[name] + v if name in self._part_sums else v

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Training logs also get the cross-entropy and KL of the steps since the last log, averaged as the loss
        is (over the processes and the steps), so that loss = ce + kl_lambda * kl."""
        if "loss" in logs:  # every process logs the training loss (the Trainer gathers it): reduce alike
            steps = max(self.state.global_step - self._parts_logged_at, 1)
            self._parts_logged_at = self.state.global_step
            device = self.args.device
            parts = torch.stack([self._part_sums.get(k, torch.zeros((), device=device)).to(device) for k in ("ce", "kl")])
            processes = self.accelerator.num_processes
            if processes > 1:
                parts = self.accelerator.reduce(parts, reduction="sum")
            if self._part_sums:
                logs["ce"], logs["kl"] = (float(v) / processes / steps for v in parts)
            self._part_sums = {}
        super().log(logs, *args, **kwargs)


class KLRegularizedTrainer(KLPenaltyMixin, Trainer):
    """A ``Trainer`` whose loss adds the KL penalty towards ``ref_model`` (options: ``KLPenaltyMixin``)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is not None and self.label_smoother is None:
            outputs = model(**inputs, labels=labels)
            data_loss = outputs.loss
        else:
            outputs = model(**inputs)
            data_loss = self.label_smoother(outputs, labels) if labels is not None else None
        logits = outputs.logits
        if logits.dim() not in (2, 3):
            raise ValueError(f"KLRegularizedTrainer needs sequence-classification logits [batch, classes] or causal-LM "
                             f"logits [batch, length, vocabulary], got shape {tuple(logits.shape)}")
        if data_loss is None:
            raise ValueError("KLRegularizedTrainer needs labels to compute a loss")
        kl = self.penalty(logits, self.reference_logits(inputs, logits.device), labels)
        # the batch's loss units, counted as the Trainer counts num_items_in_batch (next tokens for causal LMs)
        units = loss_mask(labels).sum() if logits.dim() == 3 else labels.ne(-100).sum()
        weight = self.batch_weight(units, num_items_in_batch)  # 1 in one process without accumulation
        loss = (data_loss + self.kl_lambda * kl) * weight
        self._weighted = num_items_in_batch is not None
        self.record_parts(model, data_loss * weight, kl * weight)
        return (loss, outputs) if return_outputs else loss


__all__ = ["KLPenaltyMixin", "KLRegularizedTrainer", "freeze"]
