"""The HF and TRL bridges on the same tiny models and data, in this process or in every process of
``accelerate launch ... tests/hf_launched_driver.py OUT`` (tests/test_integrations_launched.py).

``train(kind, out, processes)`` trains one trainer for a few steps at a global batch of ``GLOBAL`` examples
(``GLOBAL // processes`` per process) and writes what the test compares: rank 0 the trained weights and the
training logs, every rank whether its reference is untouched (same bytes as at the start, eval mode, no
gradient, never wrapped by DDP). Dropout is 0 everywhere: the same step on 1 and N processes.

- ``hf``: ``KLRegularizedTrainer`` on a tiny BERT sequence classifier (random token ids, 2 labels);
- ``hf-lm``: ``KLRegularizedTrainer`` on a tiny GPT-2 with -100 on prompt tokens (labels of uneven length);
- ``trl``: ``KLRegularizedSFTTrainer`` on the same GPT-2 with prompt/completion pairs, and gradient
  accumulation over 2 batches: the ranks' token counts differ, which only ``num_items_in_batch`` weighs right.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

GLOBAL = 8  # the global batch of every step
WORDS = ["yes", "no", "maybe", "so", "never", "always", "often", "sometimes", "rarely", "soon", "later", "now",
         "here", "there", "everywhere", "nowhere"]


def reference_state(trainer, start: dict) -> dict:
    """What this rank says of its reference after training."""
    from torch.nn.parallel import DistributedDataParallel

    ref = trainer.ref_model
    return {"bitwise_unchanged": all(torch.equal(v, start[k]) for k, v in ref.state_dict().items()),
            "eval_mode": not ref.training, "no_grad": all(not p.requires_grad and p.grad is None for p in ref.parameters()),
            "not_wrapped": not isinstance(ref, DistributedDataParallel),
            "model_wrapped": isinstance(trainer.model_wrapped, DistributedDataParallel)}


def gpt2(tok, seed: int, sharpen: float = 1.0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                      bos_token_id=256, eos_token_id=256, pad_token_id=257, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0))
    with torch.no_grad():  # the reference: sharper next-token distributions (tied embeddings), a KL far from 0
        model.transformer.wte.weight.mul_(sharpen)
    return model


def build(kind: str, out: Path, processes: int):
    common = dict(output_dir=str(out / "hf-out"), learning_rate=1e-2, logging_steps=1, save_strategy="no",
                  report_to=[], use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    if kind == "hf":
        import datasets
        from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

        from forgetting.integrations.hf import KLRegularizedTrainer

        def bert(seed):
            torch.manual_seed(seed)
            return BertForSequenceClassification(BertConfig(
                vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=16, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))

        g = torch.Generator().manual_seed(3)
        data = datasets.Dataset.from_dict({"input_ids": torch.randint(1, 100, (24, 12), generator=g).tolist(),
                                           "labels": torch.randint(0, 2, (24,), generator=g).tolist()})
        args = TrainingArguments(per_device_train_batch_size=GLOBAL // processes, num_train_epochs=1, **common)
        ref = bert(1)
        with torch.no_grad():  # a confident reference: a KL far from 0 from the first step
            ref.classifier.weight.mul_(30.0)
        return KLRegularizedTrainer(model=bert(0), args=args, train_dataset=data.with_format("torch"), ref_model=ref,
                                    kl_lambda=0.5)
    from forgetting.models.causal import byte_tokenizer

    tok = byte_tokenizer()
    if kind == "hf-lm":
        from transformers import DataCollatorForSeq2Seq, TrainingArguments

        from forgetting.integrations.hf import KLRegularizedTrainer
        from forgetting.objectives.causal_lm import LMData

        prompts = [tok(f"say {w}:", add_special_tokens=False)["input_ids"] for w in WORDS]
        responses = [tok(f" {w}" * (1 + i % 3), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                     for i, w in enumerate(WORDS)]
        data = LMData(prompts, responses, torch.zeros(len(WORDS), dtype=torch.long), tok).with_labels()
        collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")
        args = TrainingArguments(per_device_train_batch_size=GLOBAL // processes, num_train_epochs=1, **common)
        return KLRegularizedTrainer(model=gpt2(tok, 0), args=args, train_dataset=data, data_collator=collate,
                                    ref_model=gpt2(tok, 1, sharpen=5.0), kl_lambda=0.5)
    import datasets
    from trl import SFTConfig

    from forgetting.integrations.trl import KLRegularizedSFTTrainer

    data = datasets.Dataset.from_dict({"prompt": [f"say {w}:" for w in WORDS],
                                       "completion": [f" {w}" * (1 + i % 3) for i, w in enumerate(WORDS)]})
    args = SFTConfig(per_device_train_batch_size=GLOBAL // processes // 2, gradient_accumulation_steps=2,
                     num_train_epochs=1, bf16=False, gradient_checkpointing=False, loss_type="nll", max_length=64,
                     **common)
    return KLRegularizedSFTTrainer(model=gpt2(tok, 0), args=args, train_dataset=data, processing_class=tok,
                                   ref_model=gpt2(tok, 1, sharpen=5.0), kl_lambda=0.5)


def train(kind: str, out: Path, processes: int) -> None:
    trainer = build(kind, out, processes)
    start = {k: v.clone() for k, v in trainer.ref_model.state_dict().items()}
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    rank = trainer.args.process_index
    (out / f"{kind}-ref-rank{rank}.json").write_text(json.dumps(reference_state(trainer, start)))
    if rank == 0:
        after = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
        moved = max(float((after[k] - before[k]).abs().max()) for k in after)
        torch.save({"weights": after, "moved": moved}, out / f"{kind}-weights.pt")
        logs = [{k: h[k] for k in ("step", "loss", "ce", "kl")} for h in trainer.state.log_history if "kl" in h]
        (out / f"{kind}-logs.json").write_text(json.dumps(logs))


if __name__ == "__main__":
    from forgetting.gc_freeze import freeze_after_imports

    freeze_after_imports()  # as a command's process does
    target = Path(sys.argv[1])
    for kind in sys.argv[2:]:
        train(kind, target, int(os.environ.get("WORLD_SIZE", "1")))
