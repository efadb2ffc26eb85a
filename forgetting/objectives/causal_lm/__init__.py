"""``causal-lm``: next-token prediction with a loss mask (the causal LMs, ``--model gpt2`` or ``causal:SOURCE``).

A classifier's logits are [batch, outputs] with one target per example; a causal LM's are
[batch, length, vocabulary] and the batch dict's ``labels`` (Hugging Face's convention, -100
where no loss is taken) say which next tokens carry loss. Position i of the logits predicts
token i + 1, so logits and labels are compared shifted by one (``shifted``): the positions that
carry loss are ``labels[:, 1:] != -100`` on ``logits[:, :-1]``. The data loss is the mean
token cross-entropy over those positions in the batch (what ``model(..., labels=...).loss`` of a
Hugging Face causal LM computes); the KL penalty is taken at the same positions, over the whole
vocabulary. The token sequences are ``data.LMData`` (built by ``data.lm_stream``), the measures
``evaluate.LMEvaluator``'s.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import BadInput
from ...penalty import token_kl_estimate
from ...streams.base import iterate_batches
from ...teacher import TeacherCache
from .. import Objective
from .data import LMData, LMStream
from .evaluate import LMEvaluator
from . import sampling
from .tokens import IGNORE, loss_mask, shifted, token_loss

log = logging.getLogger("forgetting")


def lm_teacher_outputs(teacher, data: LMData, task: int, batch_size: int, device,
                       world=None) -> tuple[Tensor, Tensor]:
    """A causal LM teacher's logits at the positions that carry loss of every example of ``data``.

    (flat [positions, vocabulary] float32, offsets [examples + 1]): example i's positions, in
    order, are rows ``offsets[i]:offsets[i + 1]``, the order in which ``logits[loss_mask]``
    lists a batch's positions. Under a launcher each rank runs its part of the examples (``world.part``)
    and the rows are gathered in order.
    """
    parts = world is not None and world.distributed  # ``distributed.World``, passed down by the loop
    index = world.part(torch.arange(len(data))) if parts else None
    chunks = []
    with torch.inference_mode():
        if index is not None and len(index) == 0:  # fewer examples than ranks: a width, no rows
            inputs = next(iterate_batches(data, task, 1, shuffle=False)).to(device).inputs
            chunks.append(shifted(teacher(inputs), inputs["labels"])[0].flatten(0, 1)[:0].float())
        for batch in iterate_batches(data, task, batch_size, shuffle=False, index=index):
            inputs = batch.to(device).inputs
            logits, _ = shifted(teacher(inputs), inputs["labels"])
            chunks.append(logits[loss_mask(inputs["labels"])].float())
    counts = torch.as_tensor([len(r) for r in data.responses])
    offsets = torch.zeros(len(counts) + 1, dtype=torch.long)
    offsets[1:] = counts.cumsum(0)
    flat = world.gather_rows(torch.cat(chunks)) if parts else torch.cat(chunks)
    assert flat.shape[0] == int(offsets[-1]), "cached positions do not match the examples' loss tokens"
    return flat, offsets.to(flat.device)


def lm_fisher(model: nn.Module, data: LMData, task: int, labels: str, device):
    """A causal LM's diagonal Fisher: mean over sequences of the squared gradient of log p(y|x).

    y is the sequence's tokens that carry loss (their log-probabilities summed): the data's own
    (``empirical``) or, for ``true``, one token drawn from the model's next-token distribution at
    each of those positions (a one-sample Monte Carlo estimate of the expectation over y, from a
    generator seeded by the task, so runs repeat). One backward pass per sequence, model in eval mode.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p.detach()) for n, p in params.items()}
    gen = torch.Generator(device=device).manual_seed(1000 + task)
    was_training = model.training
    model.eval()
    try:
        for i in range(len(data)):
            inputs = {k: v.to(device) for k, v in data.gather(torch.tensor([i]))[0].items()}
            with torch.enable_grad():
                logits, targets = shifted(model(inputs), inputs["labels"])
                mask = targets != IGNORE
                logp = F.log_softmax(logits[mask].float(), dim=-1)
                y = targets[mask]
                if labels == "true":
                    y = torch.multinomial(logp.detach().exp(), 1, generator=gen).squeeze(1)
                ll = logp.gather(1, y[:, None]).sum()
                grads = torch.autograd.grad(ll, list(params.values()), allow_unused=True)
            for (name, _), g in zip(params.items(), grads):
                if g is not None:
                    fisher[name] += g.detach().float().square().to(fisher[name].dtype)
    finally:
        model.train(was_training)
    return {name: f / max(len(data), 1) for name, f in fisher.items()}


class CausalLM(Objective):
    name = "causal-lm"
    label = "causal LMs"
    provides = frozenset({"token_distribution", "answer_sampling", "completion_sampling"})
    cache_unit = "tokens"
    report_measures = (("answer_accuracy", "answer acc", 100.0), ("old_task_nll", "old-task NLL", 1.0),
                       ("nll_forgetting_max", "NLL rise", 1.0))  # held-out NLL per token (nats), not token accuracy

    def data_loss(self, logits, batch, task):
        return token_loss(logits, batch.inputs["labels"])

    def loss_units(self, batch):
        """The tokens that carry loss: the data loss and the KL are means over them."""
        return int(loss_mask(batch.inputs["labels"]).sum())

    def penalty_kl(self, logits, batch, task, teacher, cache, *, direction, temperature, estimator="exact", **_):
        """``token_kl_estimate`` (``exact``: ``token_kl_penalty``) at every position that carries loss (replayed
        examples too), the sampled estimators at the target tokens there; the teacher's logits from the cache
        where it holds the whole batch, else from the live teacher."""
        labels = batch.inputs["labels"]
        student, targets = shifted(logits, labels)
        mask = loss_mask(labels)
        options = {"direction": direction, "temperature": temperature, "estimator": estimator}
        if cache is not None and cache.holds(batch.task_ids, batch.index):
            start, end = cache.offsets[batch.index], cache.offsets[batch.index + 1]
            counts = end - start
            rows = torch.repeat_interleave(start - torch.cumsum(counts, 0) + counts, counts) + \
                torch.arange(int(counts.sum()), device=counts.device)
            cached = cache.outputs.index_select(0, rows)
            return token_kl_estimate(student[mask], cached, targets[mask],
                                     torch.ones(len(cached), dtype=torch.bool, device=cached.device), **options)
        return token_kl_estimate(student, shifted(teacher(batch), labels)[0], targets, mask, **options)

    # --- the KL's other inputs (``kl --kl-inputs policy|base``) ----------------------------------
    @staticmethod
    def _ids(model):
        config = model.lm.config
        eos = config.eos_token_id
        pad = config.pad_token_id if config.pad_token_id is not None else eos
        bos = config.bos_token_id if config.bos_token_id is not None else eos
        return bos, eos, pad

    def policy_sequences(self, model, batch, generator, *, temperature, max_new_tokens):
        """One completion of every prompt of the batch drawn from ``model`` (the caller has it in eval mode without
        gradient), seeded from the loop's ``generator``: [(prompt + completion, index of its first token)]."""
        prompts, _ = sampling.split_batch(batch.inputs)
        _, eos, pad = self._ids(model)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        drawn = sampling.generate(model, prompts, 1, seed, temperature=temperature, max_new_tokens=max_new_tokens,
                                  pad_id=pad, eos_id=eos, device=batch.inputs["input_ids"].device)
        return [(p + g[0], len(p)) for p, g in zip(prompts, drawn)]

    def base_sequences(self, teacher, n, seed, *, temperature, max_new_tokens, device):
        """``n`` context-free samples of ``teacher``: generated from the begin-of-text token alone, every token
        after it scored: [(tokens, 1)]. Reads no data."""
        model, disabled = teacher, contextlib.nullcontext()
        target = getattr(teacher, "_target", None)  # LoRA: the live model with its adapters disabled
        if target is not None:
            model, disabled = target, target.adapters_disabled()
        bos, eos, pad = self._ids(model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), disabled:
                drawn = sampling.generate(model, [[bos]], n, seed, temperature=temperature,
                                          max_new_tokens=max_new_tokens, pad_id=pad, eos_id=eos, device=device)
        finally:
            model.train(was_training)
        return [([bos] + c, 1) for c in drawn[0]]

    def sequences_reference(self, model, teacher, seqs, device) -> Tensor:
        """``teacher``'s logits on ``seqs`` as ``sequences_kl`` packs them (float32, [n, length - 1, vocabulary]):
        fixed for a frozen eval-mode teacher and fixed sequences, so ``base`` computes them once per task."""
        _, _, pad = self._ids(model)
        inputs, _, _ = sampling.pack(seqs, pad, device)
        with torch.no_grad():
            return teacher(inputs)[:, :-1].float()

    def sequences_kl(self, model, teacher, seqs, *, direction, temperature, estimator, device, reference=None):
        """The KL penalty between ``teacher`` (run without gradient; or its logits ``reference`` from
        ``sequences_reference``) and the student ``model`` (with gradient) at the scored tokens of ``seqs``
        (``token_kl_estimate``: over the vocabulary, or an estimator at the token)."""
        _, _, pad = self._ids(model)
        inputs, tokens, scored = sampling.pack(seqs, pad, device)
        student = model(inputs)[:, :-1]
        if reference is None:
            with torch.no_grad():
                reference = teacher(inputs)[:, :-1]
        return token_kl_estimate(student, reference, tokens, scored, direction=direction, temperature=temperature,
                                 estimator=estimator)

    def cache_rows(self, data):
        return sum(len(r) for r in data.responses)  # every token that carries loss

    def teacher_cache(self, teacher, data, task, batch_size, device, world=None):
        size = max(1, min(batch_size, 2**24 // (self.info["max_seq_len"] * self.layout.n_outputs)))
        outputs, offsets = lm_teacher_outputs(teacher, data, task, size, device, world)
        return TeacherCache(task, outputs, offsets)

    def fisher(self, model, data, task, labels, device):
        return lm_fisher(model, data, task, labels, device)

    # --- on-policy fine-tuning (sampling.py) ------------------------------------------------------
    @classmethod
    def check_answers(cls, options):
        kind = options.get("lm_task", "auto")
        if kind == "lm" or (kind == "auto" and not options.get("response_column")):
            raise BadInput("--objective pg: language-modelling tasks (--lm-task lm, what auto gives without a "
                           "--response-column) have no answer to sample and reward; allowed: --lm-task completion")

    def sample_answers(self, model, batch, task, groups, generator, *, temperature, max_new_tokens, log_probs=False):
        """G completions per prompt from ``generate`` on the live model, seeded from the loop's generator."""
        prompts, responses = sampling.split_batch(batch.inputs)
        if any(len(r) == 0 for r in responses) or any(len(p) <= 1 for p in prompts):
            raise BadInput("--objective pg: a causal LM's task needs prompts and responses to sample and reward "
                           "(a language-modelling task has none); allowed: --lm-task completion")
        eos_id = model.lm.config.eos_token_id  # a completion cut before the end-of-text token still matches by text
        longest = max(len([t for t in r if t != eos_id]) for r in responses)
        if max_new_tokens < longest and not getattr(self, "_warned_short", False):
            self._warned_short = True
            log.warning("--pg-max-new-tokens %d is shorter than responses of up to %d tokens before their end-of-text "
                        "token (a byte-level tokenizer takes one per byte): those are never matched, their reward is 0",
                        max_new_tokens, longest)
        config = model.lm.config
        eos = config.eos_token_id
        pad = config.pad_token_id if config.pad_token_id is not None else eos
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        completions = sampling.generate(model, prompts, groups, seed, temperature=temperature,
                                        max_new_tokens=max_new_tokens, pad_id=pad, eos_id=eos,
                                        device=batch.inputs["input_ids"].device)
        old = None
        if log_probs:
            old = sampling.completion_log_probs(model, prompts, completions, temperature=temperature, pad_id=pad,
                                                device=batch.inputs["input_ids"].device)[0]
        return completions, old

    def answer_log_probs(self, model, batch, task, answers, *, temperature):
        prompts, _ = sampling.split_batch(batch.inputs)
        config = model.lm.config
        pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        log_probs, mask = sampling.completion_log_probs(model, prompts, answers, temperature=temperature, pad_id=pad,
                                                        device=batch.inputs["input_ids"].device)
        return model(batch.inputs), log_probs, mask

    def correct(self, answers, batch, stream):
        _, responses = sampling.split_batch(batch.inputs)
        tokenizers = [stream.tasks[int(t)].train.tokenizer for t in batch.task_ids.tolist()]
        return sampling.exact_matches(answers, responses, tokenizers)

    def chosen(self, answers, batch, stream):
        """Long [inputs, G]: the choice each sampled completion picks (``sampling.pick_choice``; -1: none)."""
        tasks = [stream.tasks[int(t)] for t in batch.task_ids.tolist()]
        return sampling.chosen(answers, [t.train.choices for t in tasks], [t.train.tokenizer for t in tasks])

    def evaluator(self, stream, batch_size, device, subset=0):
        return LMEvaluator(stream, batch_size, device, subset=subset)


__all__ = ["IGNORE", "CausalLM", "LMData", "LMStream", "lm_fisher", "lm_teacher_outputs", "loss_mask",
           "shifted", "token_loss"]
