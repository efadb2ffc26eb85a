"""A causal LM's own completions for ``--objective pg``: sampled with ``generate`` (KV cache), scored token by token.

A completion batch holds ``<bos> prompt response`` right-padded with ``labels`` -100 outside the response;
the prompts are read back from it (``split_batch``), left-padded for ``generate`` (which takes position ids
from the attention mask), and G completions are drawn per prompt up to the first end-of-text token or
``max_new_tokens``. The draw is seeded by an integer taken from the loop's generator, inside
``torch.random.fork_rng``, so the global random state (dropout) is untouched and a run resumes bitwise.
Completions are scored on right-padded ``<bos> prompt completion`` sequences, the positions of the
completion's tokens only; a completion is right when its text, whitespace normalised, is the response's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .tokens import IGNORE


def split_batch(inputs: dict) -> tuple[list[list[int]], list[list[int]]]:
    """(prompts with their begin-of-text token, responses) of a right-padded completion batch."""
    ids, labels, mask = (inputs[k].detach().cpu() for k in ("input_ids", "labels", "attention_mask"))
    prompts, responses = [], []
    for j in range(ids.shape[0]):
        n = int(mask[j].sum())
        carried = (labels[j, :n] != IGNORE).nonzero().squeeze(1)
        first = int(carried[0]) if len(carried) else n
        prompts.append(ids[j, :first].tolist())
        responses.append([int(t) for t in labels[j, first:n] if int(t) != IGNORE])
    return prompts, responses


def generate(model, prompts: list[list[int]], groups: int, seed: int, *, temperature: float, max_new_tokens: int,
             pad_id: int, eos_id: int, device) -> list[list[list[int]]]:
    """G sampled completions per prompt (each up to and with its first end-of-text token), [prompts][G]; at most
    ``max_new_tokens``, and never past the model's context (its position embeddings) after the longest prompt."""
    length = max(len(p) for p in prompts)
    config = model.lm.config
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if context is not None:
        max_new_tokens = max(1, min(max_new_tokens, int(context) - length))
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), length), dtype=torch.long)
    for j, p in enumerate(prompts):
        ids[j, length - len(p):] = torch.as_tensor(p)
        attention[j, length - len(p):] = 1
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.lm.generate(input_ids=ids.to(device), attention_mask=attention.to(device), do_sample=True,
                                temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                num_return_sequences=groups, pad_token_id=pad_id, eos_token_id=eos_id)
    new = out[:, length:].cpu().tolist()
    completions = []
    for row in new:
        cut = row.index(eos_id) + 1 if eos_id in row else len(row)
        completions.append(row[:cut])
    return [completions[j * groups:(j + 1) * groups] for j in range(len(prompts))]


def completion_log_probs(model, prompts: list[list[int]], completions: list[list[list[int]]], *, temperature: float,
                         pad_id: int, device) -> tuple[Tensor, Tensor]:
    """log π(token) of every completion token under ``model`` ([prompts, G, length]) and their mask."""
    seqs = [(p, c) for p, group in zip(prompts, completions) for c in group]
    length = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), length), dtype=torch.long)
    carried = torch.zeros((len(seqs), length), dtype=torch.bool)
    for j, (p, c) in enumerate(seqs):
        ids[j, :len(p) + len(c)] = torch.as_tensor(p + c)
        attention[j, :len(p) + len(c)] = 1
        carried[j, len(p):len(p) + len(c)] = True
    ids, attention, carried = ids.to(device), attention.to(device), carried.to(device)
    logits = model({"input_ids": ids, "attention_mask": attention})
    log_probs = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
    groups = len(completions[0])
    shape = (len(prompts), groups, length - 1)
    return log_probs.reshape(shape), carried[:, 1:].reshape(shape)


def pack(seqs: list[tuple[list[int], int]], pad_id: int, device) -> tuple[dict, Tensor, Tensor]:
    """Right-padded model inputs of ``(tokens, first scored index)`` sequences, their next tokens and the mask of
    the positions whose next token is scored (the shifted layout of ``tokens.shifted``: [n, length - 1])."""
    length = max(len(t) for t, _ in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), length), dtype=torch.long)
    scored = torch.zeros((len(seqs), length), dtype=torch.bool)
    for j, (t, first) in enumerate(seqs):
        ids[j, :len(t)] = torch.as_tensor(t)
        attention[j, :len(t)] = 1
        scored[j, first:len(t)] = True
    ids, attention, scored = ids.to(device), attention.to(device), scored.to(device)
    return {"input_ids": ids, "attention_mask": attention}, ids[:, 1:], scored[:, 1:]


def normalised(text: str) -> str:
    return " ".join(text.split())


def exact_matches(completions: list[list[list[int]]], responses: list[list[int]], tokenizers) -> Tensor:
    """Bool [prompts, G]: the completion's text (special tokens left out, whitespace normalised) is the response's."""
    out = torch.zeros((len(completions), len(completions[0])), dtype=torch.bool)
    for j, (group, response, tok) in enumerate(zip(completions, responses, tokenizers)):
        want = normalised(tok.decode(response, skip_special_tokens=True))
        for g, c in enumerate(group):
            out[j, g] = normalised(tok.decode(c, skip_special_tokens=True)) == want
    return out


def pick_choice(text: str, choices: list[str]) -> int:
    """The choice a completion's text picks: the index of the choice that the text, whitespace normalised, is or
    begins with followed by a space (the longest such choice), or -1 (none: an unfinished or other answer).
    " positive" and " positive, I think" pick "positive"; " positively" and " pos" pick none."""
    said = normalised(text)
    best, length = -1, -1
    for k, c in enumerate(choices):
        c = normalised(c)
        if c and (said == c or said.startswith(c + " ")) and len(c) > length:
            best, length = k, len(c)
    return best


def chosen(completions: list[list[list[int]]], choices: list[list[list[int]]], tokenizers) -> Tensor:
    """Long [prompts, G]: the index of the choice each completion picks (``pick_choice``; -1: none), with each
    prompt's task's ``choices`` as token ids (their end-of-text token left out by the decoding)."""
    out = torch.full((len(completions), len(completions[0])), -1, dtype=torch.long)
    for j, (group, options, tok) in enumerate(zip(completions, choices, tokenizers)):
        texts = [tok.decode(c, skip_special_tokens=True) for c in options]
        for g, c in enumerate(group):
            out[j, g] = pick_choice(tok.decode(c, skip_special_tokens=True), texts)
    return out
