"""Our token-level KL penalty in TRL's ``SFTTrainer``: supervised fine-tuning of a causal LM while
holding its next-token distributions close to a frozen reference (usually the model before).

    from forgetting.integrations.trl import KLRegularizedSFTTrainer
    trainer = KLRegularizedSFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds,
                                      processing_class=tokenizer, kl_lambda=0.5)
    trainer.train()   # logs "ce" and "kl" beside "loss"

SFTTrainer prepares the data as always (tokenization, completion-only and assistant-only labels,
packing); the loss of a batch is its data loss plus ``kl_lambda * token_kl_penalty`` at every token
that carries loss (label not -100), the reference run in eval mode under ``torch.no_grad`` on the
same inputs. The penalty code is ``KLPenaltyMixin``'s, shared with ``KLRegularizedTrainer``.

Why ``compute_loss`` is our own: TRL (1.16) computes its loss through a fused LM head that never
builds the logits, and the penalty is taken over the whole vocabulary, so the student runs its
plain forward (full logits) and the data loss is SFT's from them: the summed token NLL (``dft``:
weighted by the token's probability; or ``compute_loss_func`` / label smoothing when set) over the
accumulated batch's token count ``num_items_in_batch``, and the summed token KL over the same count,
so gradient accumulation weighs both alike. Under ``accelerate launch`` that count is every process's
(``average_tokens_across_devices``, the default) and the loss is multiplied by the number of processes,
as SFTTrainer and Trainer scale theirs, because DDP averages the processes' gradients: the step is that of
one process at the same global batch (``KLPenaltyMixin.batch_weight``). SFT's ``entropy`` and
``mean_token_accuracy`` metrics are not logged. Needs ``pip install 'forgetting[lm]'``.

``ForgettingCallback`` (``trl_forgetting``): forgetting curves for any TRL trainer (GRPO, SFT, DPO):
the old tasks and the KL drift measured at the trainer's logs, written as a harness run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..objectives.causal_lm.tokens import IGNORE, loss_mask, shifted
from ..extras import require
from ..teacher import frozen_copy
from .hf import KLPenaltyMixin
from .trl_forgetting import ForgettingCallback

require("lm", "KLRegularizedSFTTrainer (TRL's SFTTrainer with the token-level KL penalty)", ("trl",))

from trl import SFTTrainer  # noqa: E402


class KLRegularizedSFTTrainer(KLPenaltyMixin, SFTTrainer):
    """TRL's ``SFTTrainer`` whose loss adds the token-level KL penalty towards ``ref_model``.

    Options as ``KLRegularizedTrainer``'s (``ref_model``, ``kl_lambda``, ``kl_direction``,
    ``temperature``). The default reference is a frozen copy of ``model`` taken before SFTTrainer
    patches its forward (a copy taken after would run the patched forward of the live model), so
    ``model`` must then be a loaded model, not a name.
    """

    def __init__(self, model, *args, ref_model: nn.Module | None = None, **kwargs):
        if ref_model is None:
            if not isinstance(model, nn.Module):
                raise ValueError(f"KLRegularizedSFTTrainer: model {model!r} is a name; pass the loaded model "
                                 "(AutoModelForCausalLM.from_pretrained(...)) or a ref_model, so the reference is "
                                 "a copy of the model before SFTTrainer patches its forward")
            ref_model = frozen_copy(model)
        super().__init__(model, *args, ref_model=ref_model, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        if "shift_labels" in inputs:
            raise ValueError("KLRegularizedSFTTrainer reads the penalty's tokens from unshifted labels; pre-shifted "
                             "shift_labels (context or sequence parallelism) are not supported")
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError("KLRegularizedSFTTrainer needs the batch's labels (-100 where no loss is taken)")
        inputs["use_cache"] = False
        outputs = model(**inputs)  # without fused_lm_head: TRL's patched forward is the plain one, full logits
        logits = getattr(outputs, "logits", None)
        if logits is None:
            raise ValueError("KLRegularizedSFTTrainer needs the model's logits for the penalty, and its forward "
                             "returned none (use_liger_kernel skips them: set it to False)")
        tokens = loss_mask(labels).sum()
        count = num_items_in_batch if num_items_in_batch is not None else tokens
        count = torch.as_tensor(count, device=logits.device).clamp(min=1)
        data_loss = self.data_loss(outputs, labels, num_items_in_batch, count)  # a sum over the step's count
        kl_mean = self.penalty(logits, self.reference_logits(inputs, logits.device), labels)
        kl = kl_mean * (tokens / count)  # the summed token KL over the same count as the data loss
        processes = self.processes_averaged(num_items_in_batch)  # a count of every process's tokens, DDP averages
        self._weighted = num_items_in_batch is not None
        loss = (data_loss + self.kl_lambda * kl) * processes
        self.record_parts(model, data_loss * processes, kl * processes)
        return (loss, outputs) if return_outputs else loss

    def data_loss(self, outputs, labels: torch.Tensor, num_items_in_batch, count: torch.Tensor) -> torch.Tensor:
        """SFT's data loss from the full logits: ``compute_loss_func`` or label smoothing when set, else the
        summed token NLL (``dft``: times the token's probability, detached) over ``count`` tokens."""
        if self.compute_loss_func is not None:
            return self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        if self.label_smoother is not None:
            return self.label_smoother(outputs, labels, shift_labels=True, num_items_in_batch=num_items_in_batch)
        logits, targets = shifted(outputs.logits, labels)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                              ignore_index=IGNORE, reduction="none")
        if self.args.loss_type == "dft":  # Dynamic Fine-Tuning: https://huggingface.co/papers/2508.05629
            nll = nll * torch.exp(-nll).detach()
        return nll.sum() / count


__all__ = ["ForgettingCallback", "KLRegularizedSFTTrainer"]
