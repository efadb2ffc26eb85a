"""Greedy generation from a task's prompts with the model's own ``generate`` (KV cache), for the benchmarks' scores.

Prompts are grouped by length so that a batch needs no padding (a left-padded batch would need
position ids that not every model derives from the mask): each example is decoded exactly as it
would be alone. Decoding stops at the end-of-text token or after ``max_new_tokens``.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch
from torch import nn


def hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside the harness's wrapper (``CausalLM.lm``), or the model itself."""
    return getattr(model, "lm", model)


def greedy(model: nn.Module, data, rows: torch.Tensor, max_new_tokens: int, batch_size: int,
           device: torch.device) -> tuple[list[list[int]], float]:
    """(generated token ids per row of ``rows``, up to and without the end-of-text token; seconds taken)."""
    lm = hf_model(model)
    eos = data.tokenizer.eos_token_id
    by_length: dict[int, list[int]] = defaultdict(list)
    for j, i in enumerate(rows.tolist()):
        by_length[len(data.prompts[i])].append(j)
    out: list[list[int] | None] = [None] * len(rows)
    start = time.perf_counter()
    was = lm.training
    lm.eval()
    try:
        with torch.inference_mode():
            for _, members in sorted(by_length.items()):
                for s in range(0, len(members), batch_size):
                    chunk = members[s : s + batch_size]
                    ids = torch.as_tensor([[data.bos, *data.prompts[int(rows[j])]] for j in chunk], device=device)
                    gen = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      do_sample=False, num_beams=1, use_cache=True, eos_token_id=eos,
                                      pad_token_id=data.pad, temperature=None, top_p=None, top_k=None)
                    for j, seq in zip(chunk, gen[:, ids.shape[1]:].tolist()):
                        out[j] = seq[: seq.index(eos)] if eos in seq else seq
    finally:
        lm.train(was)
    return out, time.perf_counter() - start
