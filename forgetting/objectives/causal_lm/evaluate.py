"""Held-out measures of a causal LM on every task of the stream, at one evaluation point.

Per task, over the tokens of its test set that carry loss (every token of an ``lm`` text, the
response of a ``completion``):

- ``nll``: mean negative log-likelihood per token (nats; also the row's ``loss``), and
  ``perplexity`` = exp(nll);
- ``token_accuracy``: fraction of those tokens that are the model's most likely next token;
- ``exact_match`` (completion tasks): fraction of examples whose whole response, end-of-text
  token included, is what greedy decoding from the prompt gives. Computed exactly by teacher
  forcing: greedy decoding reproduces a response iff each of its tokens is the argmax given the
  tokens before it, so no generation loop is needed;
- ``answer_accuracy`` (completion tasks with choices): fraction of examples whose response is
  the choice with the highest likelihood (sum of its tokens' log-probabilities);
- ``kl_base``: mean per-token KL(p_base || p_current) over the same tokens, p_base the model at
  the end of task 0 (run live: full-vocabulary logits per token are too large to cache).

``accuracy`` is the answer accuracy where a task has choices and the token accuracy otherwise,
so the accuracy matrix, forgetting and transfer of ``metrics`` apply to LM runs unchanged.

With ``--max-new-tokens N`` (completion tasks), the answers are also generated greedily
(``generate.greedy``, the model's ``generate`` with its KV cache) and scored as the benchmarks
score them (``scores``): ``gen_exact_match``, ``rouge_l``, ``bleu``, and ``gen_score``, the task's
own score (TRACE's ROUGE-L for MeetingBank, edit similarity for Py150, SARI for 20Minuten, exact
match elsewhere), which is then the row's ``accuracy``, so OP and BWT are TRACE's.
``gen_tokens_per_s`` is the generation's speed (timing).

With ``--lm-eval-tasks``, ``boundary_rows`` gives lm-evaluation-harness's scores of the live
model (``harness``): the loop adds them at the untrained model and at the end of every task, and
with ``--lm-eval-at evaluations`` (``rows_at_every_evaluation``) at every evaluation point too.

Under a launcher (``world``) each rank evaluates its contiguous part of every test set and the sums (tokens,
hits, summed NLL and KL, float64) are added over the ranks before the means are taken, so the rows are one
process's; generations are gathered in order. lm-eval's rows come from rank 0 alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...evaluate import SUBSET_SEED
from ...penalty import token_kl_sum
from ...streams.base import TaskStream
from . import scores
from .generate import greedy
from .tokens import IGNORE, loss_mask, shifted

# Logits floats per evaluation batch (64 MiB): bounds the batch size for long texts or large vocabularies.
EVAL_FLOATS = 2**24


class LMEvaluator:
    """Evaluates a causal LM on each task's test set under ``torch.inference_mode`` (same interface as ``Evaluator``)."""

    world = None  # the run's ``distributed.World`` under a launcher (set by the loop)

    def __init__(self, stream: TaskStream, batch_size: int, device: torch.device, subset: int = 0):
        self.stream = stream
        self.device = device
        longest = stream.info.get("max_seq_len", 512)
        self.batch_size = max(1, min(batch_size, EVAL_FLOATS // (longest * stream.layout.n_outputs)))
        self.max_new_tokens = int(stream.info.get("max_new_tokens", 0) or 0)
        if self.max_new_tokens:  # the scores' libraries, checked before anything is written
            from ...extras import require

            require("lm", "--max-new-tokens", ("rouge_score", "sacrebleu", "rapidfuzz"))
        self.harness = None
        self.rows_at_every_evaluation = stream.info.get("lm_eval_at") == "evaluations"
        if stream.info.get("lm_eval_tasks"):
            from .harness import Harness

            self.harness = Harness(stream.info["lm_eval_tasks"], stream.info.get("lm_eval_limit", 0),
                                   stream.info.get("lm_eval_include_path", ""), batch_size, longest, stream.tokenizer)
        self.index: list[torch.Tensor] = []
        g = torch.Generator().manual_seed(SUBSET_SEED)
        for t in stream.tasks:
            n = len(t.test)
            self.index.append(torch.randperm(n, generator=g)[:subset].sort().values if 0 < subset < n
                              else torch.arange(n))

    def _batches(self, task: int):
        idx = self.index[task] if self.world is None else self.world.part(self.index[task])
        for start in range(0, len(idx), self.batch_size):
            yield idx[start : start + self.batch_size]

    @staticmethod
    def _to(inputs: dict, device) -> dict:
        return {k: v.to(device) for k, v in inputs.items()}

    def _response_logprob(self, model: nn.Module, data, rows: torch.Tensor, response: list[int]) -> torch.Tensor:
        """Sum of log p(response tokens) per example at ``rows``, with every example given ``response``."""
        inputs = self._to(data.sequences(rows, [response] * len(rows)), self.device)
        logits, labels = shifted(model(inputs).float(), inputs["labels"])
        mask = labels != IGNORE
        logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
        return (logp * mask).sum(1)

    def evaluate_task(self, model: nn.Module, task: int, base_model: nn.Module | None = None) -> dict:
        data = self.stream.tasks[task].test
        completion = self.stream.info.get("lm_task") == "completion"
        sums = {"nll": 0.0, "tokens": 0, "correct": 0, "exact": 0, "answer": 0, "kl": 0.0}
        n = 0
        was_training = model.training
        model.eval()
        try:
            sharded = self.world is not None and getattr(self.world, "fsdp", False)
            with torch.no_grad() if sharded else torch.inference_mode():  # FSDP: see Evaluator._no_grad
                for _ in range(self.world.passes_owed(len(self.index[task]), self.batch_size) if sharded else 0):
                    first = self.index[task][:1]  # a forward is a collective: as many passes as the other ranks
                    model(self._to(data.gather(first)[0], self.device))
                    for c in data.choices if completion and data.choices else []:
                        self._response_logprob(model, data, first, c)
                for rows in self._batches(task):
                    inputs = self._to(data.gather(rows)[0], self.device)
                    logits = model(inputs).float()
                    lg, labels = shifted(logits, inputs["labels"])
                    mask = loss_mask(inputs["labels"])
                    logp = torch.log_softmax(lg, -1)
                    target_logp = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
                    hit = (lg.argmax(-1) == labels) & mask
                    sums["nll"] -= float((target_logp * mask).sum())
                    sums["tokens"] += int(mask.sum())
                    sums["correct"] += int(hit.sum())
                    sums["exact"] += int((hit.sum(1) == mask.sum(1)).sum())
                    if base_model is not None:
                        base = base_model(inputs).float()
                        kl, _ = token_kl_sum(lg, shifted(base, inputs["labels"])[0], mask)
                        sums["kl"] += float(kl)
                    if completion and data.choices:
                        scores = torch.stack([self._response_logprob(model, data, rows, c) for c in data.choices], 1)
                        sums["answer"] += int((scores.argmax(1).cpu() == data.targets[rows]).sum())
                    n += len(rows)
        finally:
            model.train(was_training)
        if self.world is not None and self.world.distributed:
            # the ranks' parts: sums of counts (exact in float64) and of float sums, then the means
            names = list(sums)
            *totals, n = self.world.sum_floats([float(sums[k]) for k in names] + [float(n)], self.device)
            sums = {k: (v if k in ("nll", "kl") else int(v)) for k, v in zip(names, totals)}
            n = int(n)
        tokens = max(sums["tokens"], 1)
        nll = sums["nll"] / tokens
        token_accuracy = sums["correct"] / tokens
        answer = sums["answer"] / max(n, 1) if completion and data.choices else float("nan")
        return {
            "eval_task": task,
            "eval_task_name": self.stream.tasks[task].name,
            "accuracy": answer if not math.isnan(answer) else token_accuracy,
            "loss": nll,
            "kl_base": sums["kl"] / tokens if base_model is not None else float("nan"),
            "n_eval": n,
            "nll": nll,
            "perplexity": math.exp(min(nll, 700.0)),
            "token_accuracy": token_accuracy,
            "answer_accuracy": answer,
            "exact_match": sums["exact"] / max(n, 1) if completion else float("nan"),
            "n_tokens": sums["tokens"],
            **(self.generated(model, task) if completion and self.max_new_tokens > 0 else {}),
        }

    def generated(self, model: nn.Module, task: int) -> dict:
        """The benchmark's scores of greedy generations on the task's evaluated examples (``accuracy`` = its own)."""
        data = self.stream.tasks[task].test
        rows = self.index[task]
        mine = rows if self.world is None else self.world.part(rows)
        out, seconds = greedy(model, data, mine, self.max_new_tokens, max(1, min(self.batch_size, 64)), self.device) \
            if len(mine) else ([], 0.0)
        decode = data.tokenizer.decode
        if self.world is not None and self.world.distributed:
            # every rank's generations in order; the speed: all the tokens over the slowest rank's time
            out = self.world.gather_objects([list(ids) for ids in out])
            seconds = max(self.world.gather_objects([seconds]))
        predictions = [decode(ids) for ids in out]
        references = [decode(data.responses[i][:-1]) for i in rows.tolist()]
        measured = {"gen_exact_match": scores.exact_match(predictions, references),
                    "rouge_l": scores.rouge_l(predictions, references), "bleu": scores.bleu(predictions, references)}
        name = self.stream.tasks[task].name
        own = scores.main_score(self.stream.info.get("scoring"), name[name.find("[") + 1 : -1] if "[" in name else name)
        if own == "edit_similarity":
            gen_score = scores.edit_similarity(predictions, references)
        elif own == "sari":  # against the prompt as the source, as TRACE scores 20Minuten
            sources = [decode(data.prompts[i]) for i in rows.tolist()]
            gen_score = scores.sari(sources, predictions, [[r] for r in references])
        else:
            gen_score = measured["gen_exact_match" if own == "exact_match" else own]
        n_tokens = sum(len(ids) for ids in out)
        return {**measured, "gen_score": gen_score, "accuracy": gen_score,
                "gen_tokens_per_s": n_tokens / seconds if seconds > 0 else float("nan")}

    def boundary_rows(self, model: nn.Module) -> list[dict]:
        """lm-evaluation-harness's rows of the live model (none without ``--lm-eval-tasks``): eval_task numbers
        after the stream's tasks, eval_task_name the lm-eval task, accuracy its main metric."""
        if self.harness is None:
            return []
        return self.harness.rows(model, first_index=len(self.stream))

    def evaluate(self, model: nn.Module, base_model: nn.Module | None = None,
                 trained_task: int | None = None) -> list[dict]:
        """One row per task of the stream, seen and unseen (``trained_task``: as ``Evaluator``'s, unused here:
        a language model's outputs are its vocabulary whatever has been trained)."""
        return [self.evaluate_task(model, k, base_model) for k in range(len(self.stream))]
