"""Our token-level KL penalty in TRL's ``SFTTrainer``: supervised fine-tuning of a causal LM while
holding its next-token distributions close to a frozen reference (usually the model before).

    from forgetting.integrations.trl import KLRegularizedSFTTrainer
    trainer = KLRegularizedSFTTrainer(model=model, args=SFTConfig(..., loss_type="nll"),
                                      train_dataset=ds, processing_class=tokenizer, kl_lambda=0.5)
    trainer.train()   # logs "ce" and "kl" beside "loss"

The loss of a batch is SFTTrainer's own data loss (its tokenization, completion-only and
assistant-only masks, ``nll`` or ``dft``) plus ``kl_lambda * token_kl_penalty`` at every token
that carries loss (label not -100), the reference run in eval mode under ``torch.no_grad`` on the
same inputs. The penalty code is ``KLPenaltyMixin``'s, shared with ``KLRegularizedTrainer``.
TRL's default ``loss_type="chunked_nll"`` (the same loss, with the output layer computed on the
loss-carrying tokens only) returns no logits: the trainer runs ``nll`` instead and says so;
``use_liger_kernel`` (no logits either) is refused. Needs ``pip install 'forgetting[lm]'``.
"""

from __future__ import annotations

import copy
import logging

from ..causal_lm import loss_mask
from ..extras import require
from .hf import KLPenaltyMixin

require("lm", "KLRegularizedSFTTrainer (TRL's SFTTrainer with the token-level KL penalty)", ("trl",))

from trl import SFTConfig, SFTTrainer  # noqa: E402

logger = logging.getLogger(__name__)


class KLRegularizedSFTTrainer(KLPenaltyMixin, SFTTrainer):
    """TRL's ``SFTTrainer`` whose loss adds the token-level KL penalty towards ``ref_model``.

    Options as ``KLRegularizedTrainer``'s (``ref_model``, ``kl_lambda``, ``kl_direction``,
    ``temperature``). The penalty is normalised like the data loss: when the Trainer divides the
    summed token loss by the tokens of the whole accumulated batch (``num_items_in_batch``), the
    summed token KL is divided by the same count, so gradient accumulation weighs both alike; with
    one batch per step both are the means over the batch's loss-carrying tokens.
    """

    def __init__(self, model, args: SFTConfig | None = None, *rest, **kwargs):
        if args is None:
            args = SFTConfig(loss_type="nll")
        if getattr(args, "use_liger_kernel", False):
            raise ValueError("KLRegularizedSFTTrainer needs the model's logits for the penalty, and use_liger_kernel "
                             "does not compute them: set use_liger_kernel=False")
        if getattr(args, "loss_type", None) == "chunked_nll":
            logger.warning("KLRegularizedSFTTrainer: loss_type 'chunked_nll' computes no logits and the penalty needs "
                           "them; running 'nll' (the same loss). Pass loss_type='nll' to silence this.")
            args = copy.copy(args)
            args.loss_type = "nll"
        super().__init__(model, args, *rest, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        if "shift_labels" in inputs:
            raise ValueError("KLRegularizedSFTTrainer reads the penalty's tokens from unshifted labels; pre-shifted "
                             "shift_labels (context or sequence parallelism) are not supported")
        labels = inputs.get("labels")
        data_loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                  num_items_in_batch=num_items_in_batch)
        logits = getattr(outputs, "logits", None)
        if logits is None or labels is None:
            raise ValueError("KLRegularizedSFTTrainer needs the batch's labels and the model's logits for the penalty")
        ref_inputs = {k: v for k, v in inputs.items() if k != "labels"}  # as the model got them (use_cache etc.)
        kl = self.penalty(logits, self.reference_logits(ref_inputs, logits.device), labels)
        tokens = int(loss_mask(labels).sum())
        share = self._token_share(num_items_in_batch, tokens)
        loss = data_loss + self.kl_lambda * kl * share
        self.record_parts(model, data_loss / share, kl)  # both as means over this batch's tokens
        return (loss, outputs) if return_outputs else loss

    def _token_share(self, num_items_in_batch, tokens: int) -> float:
        """The factor by which the Trainer's normalisation of the data loss differs from this batch's token
        mean: tokens / num_items_in_batch when the loss was divided by the accumulated batch's token count
        (times the processes when tokens are averaged across devices), else 1."""
        normalised = num_items_in_batch is not None and (self.model_accepts_loss_kwargs
                                                         or self.compute_loss_func is not None)
        if not normalised or tokens == 0:
            return 1.0
        share = tokens / float(num_items_in_batch)
        if self.args.average_tokens_across_devices:  # as Trainer.compute_loss scales the data loss
            processes = self.accelerator.num_processes // self.get_tp_size()
            share *= processes if self.args.n_gpu <= 1 else self.args.n_gpu
        return share


__all__ = ["KLRegularizedSFTTrainer"]
