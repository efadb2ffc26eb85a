"""Language-modelling tasks from the text sources, for causal LMs (``--model gpt2`` or ``causal:SOURCE``).

Every text source (uci-sentiment, ag-news, clinc150, text-file, five-datasets) gives LM tasks
when ``--model`` is a causal LM, in one of two forms (``--lm-task``):

- ``lm``: language modelling of the task's texts: ``<bos> text <eos>``, the loss on every token
  of the text and on the end-of-text token (a domain's language: amazon, then yelp, then imdb);
- ``completion``: a prompt and a response, the loss on the response tokens only (and the
  end-of-text token after them, so the model learns to stop). From a labelled source the prompt
  is ``--lm-prompt`` with ``{text}`` filled in (the source's own template by default, e.g.
  ``Review: {text}\\nSentiment:``) and the response a space and the label's name (`` positive``);
  from a ``text-file`` with ``--prompt-column`` and ``--response-column``, the two columns as given.

``auto`` (the default) is ``completion`` for prompt/response files and ``lm`` otherwise.
Sequences are right-padded per batch; ``labels`` (Hugging Face's convention: the token itself,
shifted by the loss) are -100 on padding, on the begin-of-text token and on prompt tokens.
A prompt too long for ``--max-seq-len`` loses its beginning (its end, next to the response,
stays); a response that does not fit is an error; an ``lm`` text is cut at the context.

Completion tasks have choices where the responses form a small set (a labelled source's
classes; a file's distinct responses of a task when there are at most ``--lm-max-choices``):
the evaluation then reports answer accuracy (the choice the model gives the highest likelihood).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...errors import BadInput
from ...options import Option
from ...streams.base import HeadLayout, Task
from ...streams.text import RawTask, TextStream

LM_TASKS = ("auto", "lm", "completion")
DEFAULT_PROMPT = "Input: {text}\nOutput:"

# Declared by the causal models (forgetting/models/causal.py), whose tokenizer maker carries their
# values to the stream (``TokenizerMaker.options``): they apply only with a causal LM.
OPTIONS = [
    Option("lm_task", str, "auto", "causal LMs: lm = language modelling of each task's texts (loss on every token); "
           "completion = prompt -> response, loss on the response only; auto = completion for a text-file with "
           "--response-column, else lm", choices=LM_TASKS),
    Option("lm_prompt", str, "", "causal LMs, completion from labelled texts: the prompt template, {text} is the "
           "text (empty: the source's own, e.g. 'Review: {text}\\nSentiment:', else 'Input: {text}\\nOutput:')"),
    Option("lm_max_choices", int, 16, "causal LMs, completion from a prompt/response file: score answer accuracy "
           "over a task's distinct responses when it has at most this many (0: never)", minimum=0),
    # measures added later: at their defaults they leave the run ids of earlier runs unchanged
    Option("max_new_tokens", int, 0, "causal LMs, completion tasks: also generate each answer greedily (generate, "
           "KV cache) up to this many tokens and score it as the benchmark does: exact match, ROUGE-L, BLEU "
           "(0: no generation; --eval-subset bounds the examples)", minimum=0, hashed_at_default=False),
    Option("lm_eval_tasks", str, [], "causal LMs: lm-evaluation-harness tasks scored on the live model at the start "
           "and at the end of every task, one row each (e.g. forgetting_general_mc, offline; hellaswag arc_easy "
           "mmlu with a network; a comma-separated list works too)", nargs="*", hashed_at_default=False),
    Option("lm_eval_limit", int, 0, "causal LMs: examples per lm-eval task (0: all)", minimum=0,
           hashed_at_default=False),
    Option("lm_eval_include_path", str, "", "causal LMs: a folder of your own lm-eval task YAMLs (relative "
           "data_files are read beside each YAML)", hashed=False),
    Option("lm_eval_at", str, "boundaries", "causal LMs with --lm-eval-tasks: when they run: boundaries = at the "
           "start and at the end of every task; evaluations = at every evaluation point too (each epoch's end, every "
           "--eval-every steps)", choices=("boundaries", "evaluations"), hashed_at_default=False),
]


@dataclass
class LMStream(TextStream):
    """A stream of causal-LM tasks: its objective (``objectives.causal_lm.CausalLM``) tells the loop, methods and
    evaluator how to read logits."""

    objective: str = "causal-lm"


class LMData:
    """Token sequences ``<bos> prompt response`` of one split of one task; loss on the response.

    ``prompts`` and ``responses`` are token id lists (a response ends with the end-of-text token;
    an ``lm`` example has an empty prompt). ``targets`` are each example's choice index (0 where
    a task has no choices), so per-class samplers (replay) see the answers as classes.
    """

    def __init__(self, prompts: list[list[int]], responses: list[list[int]], targets: Tensor, tokenizer,
                 choices: list[list[int]] | None = None):
        if len(prompts) != len(responses) or len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} prompts, {len(responses)} responses, {len(targets)} targets")
        self.prompts = prompts
        self.responses = responses
        self.targets = targets.long()
        self.choices = choices  # token ids of each choice's response (with end-of-text), or None
        self.bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.prompts)

    def sequences(self, index: Tensor, responses: list[list[int]] | None = None) -> dict[str, Tensor]:
        """A batch dict of the examples at ``index``, right-padded; ``responses`` replaces their responses."""
        rows = index.tolist()
        prompts = [self.prompts[i] for i in rows]
        resp = [self.responses[i] for i in rows] if responses is None else responses
        length = max(1 + len(p) + len(r) for p, r in zip(prompts, resp))
        ids = torch.full((len(rows), length), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for j, (p, r) in enumerate(zip(prompts, resp)):
            seq = [self.bos, *p, *r]
            ids[j, : len(seq)] = torch.as_tensor(seq)
            mask[j, : len(seq)] = 1
            labels[j, 1 + len(p) : len(seq)] = torch.as_tensor(r)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def gather(self, index: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        return self.sequences(index), self.targets[index]

    def with_labels(self):
        """The split as a ``datasets.Dataset`` of unpadded input_ids, attention_mask and labels (HF Trainer)."""
        import datasets

        seqs, labels = [], []
        for p, r in zip(self.prompts, self.responses):
            seqs.append([self.bos, *p, *r])
            labels.append([-100] * (1 + len(p)) + list(r))
        return datasets.Dataset.from_dict({"input_ids": seqs, "attention_mask": [[1] * len(s) for s in seqs],
                                           "labels": labels})

    def by_length(self) -> "LMData":
        """The same examples ordered by length, so that evaluation batches carry little padding."""
        order = sorted(range(len(self)), key=lambda i: len(self.prompts[i]) + len(self.responses[i]))
        return LMData([self.prompts[i] for i in order], [self.responses[i] for i in order], self.targets[order],
                      self.tokenizer, self.choices)


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def label_name(label: Any, names: dict | None) -> str:
    if names and label in names:
        return str(names[label])
    return str(label).replace("_", " ")


def lm_stream(name: str, scenario: str, raw: list[RawTask], options: dict, info: dict | None = None) -> LMStream:
    """The LM stream of ``raw`` tasks (already sampled), tokenised by the causal model's tokenizer maker
    ``options['tokenizer']`` (a ``TokenizerMaker``), in the form its ``options`` say."""
    make_tokenizer = options["tokenizer"]
    options = {**options, **make_tokenizer.options}
    info = dict(info or {})
    if scenario != "domain":
        raise BadInput(f"--scenario: causal LMs have one output space (the vocabulary), allowed: domain, got {scenario!r}")
    pairs = bool(info.pop("lm_pairs", False))
    fixed_choices = bool(info.pop("lm_choices_are_classes", False))  # olora: labels.json, not the labels seen
    unlabelled = bool(info.pop("lm_unlabelled", False))
    form = options.get("lm_task", "auto")
    if form == "auto":
        form = "completion" if pairs else "lm"
    if form == "completion" and unlabelled:
        raise BadInput(f"--lm-task completion: {info.get('source', name)!r} has no label column, so it is a corpus "
                       "for language modelling; allowed: lm, auto (or a --label-column, or --prompt-column and "
                       "--response-column)")
    template = options.get("lm_prompt") or info.get("lm_template") or DEFAULT_PROMPT
    if form == "completion" and not pairs and "{text}" not in template:
        raise BadInput(f"--lm-prompt: {template!r} has no {{text}}, allowed: a template holding {{text}}")
    names = info.pop("label_names", None)
    max_len = options["max_seq_len"]
    tokenizer, source = make_tokenizer([x for t in raw for x in t.train_texts])
    eos = tokenizer.eos_token_id
    tasks = []
    for i, t in enumerate(raw):
        choices_text: list[str] | None = None
        if form == "completion" and not pairs:
            choices_text = [" " + label_name(c, names) for c in t.classes]
        elif form == "completion" and pairs:
            distinct = list(t.classes) if fixed_choices else sorted(set(t.train_labels) | set(t.test_labels))
            if 0 < len(distinct) <= options.get("lm_max_choices", 16):
                choices_text = [str(r) for r in distinct]
        choice_ids = [ids + [eos] for ids in _encode(tokenizer, choices_text)] if choices_text else None
        splits = []
        for split, texts, labels in (("training", t.train_texts, t.train_labels), ("test", t.test_texts, t.test_labels)):
            if form == "lm":
                full = [f"{x}{r}" for x, r in zip(texts, labels)] if pairs else list(texts)
                prompts = [[] for _ in full]
                responses = [ids[: max_len - 2] + [eos] for ids in _encode(tokenizer, full)]
                targets = torch.zeros(len(full), dtype=torch.long)
            else:
                prompt_texts = list(texts) if pairs else [template.format(text=x) for x in texts]
                response_texts = [str(r) for r in labels] if pairs else [" " + label_name(y, names) for y in labels]
                responses = [ids + [eos] for ids in _encode(tokenizer, response_texts)]
                prompts = []
                for k, (p, r) in enumerate(zip(_encode(tokenizer, prompt_texts), responses)):
                    room = max_len - 1 - len(r)
                    if room < 0:
                        raise BadInput(f"task {t.name!r}: {split} response {k} has {len(r)} tokens with its end-of-text "
                                       f"token, longer than the context (--max-seq-len {max_len} with one begin "
                                       f"token), allowed: responses of at most {max_len - 2} tokens")
                    if choice_ids:  # every choice is scored after this prompt: the longest must fit too
                        room = max(0, min(room, max_len - 1 - max(len(c) for c in choice_ids)))
                    prompts.append(p[len(p) - room :] if room < len(p) else p)
                if choices_text is not None:
                    key = response_texts if pairs else labels
                    order = [str(c) for c in choices_text] if pairs else list(t.classes)
                    targets = torch.as_tensor([order.index(str(y) if pairs else y) for y in key], dtype=torch.long)
                else:
                    targets = torch.zeros(len(prompts), dtype=torch.long)
            splits.append(LMData(prompts, responses, targets, tokenizer, choice_ids))
        train, test = splits
        classes = [c.strip() for c in choices_text] if choices_text else []
        tasks.append(Task(i, f"{name}[{t.name}]", train, test.by_length(), classes, []))
    layout = HeadLayout("domain", [[] for _ in raw], len(tokenizer))
    info.update(max_seq_len=max_len, tokenizer_source=source, lm_task=form)
    if options.get("max_new_tokens"):
        info["max_new_tokens"] = int(options["max_new_tokens"])
    lm_eval_tasks = [n.strip() for v in options.get("lm_eval_tasks") or [] for n in str(v).split(",") if n.strip()]
    if lm_eval_tasks:
        info.update(lm_eval_tasks=lm_eval_tasks, lm_eval_limit=int(options.get("lm_eval_limit") or 0),
                    lm_eval_include_path=options.get("lm_eval_include_path") or "",
                    lm_eval_at=options.get("lm_eval_at") or "boundaries")
    if form == "completion" and not pairs:
        info["lm_prompt"] = template
    eval_only = sum(t.eval_only for t in raw)
    if any(t.eval_only for t in raw[: len(raw) - eval_only]):
        raise ValueError("evaluation-only tasks must come after the learned ones")
    return LMStream(name, scenario, tasks, layout, "text", (), info=info, tokenizer=tokenizer, eval_only=eval_only)
