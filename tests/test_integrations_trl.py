"""KLRegularizedSFTTrainer: TRL's SFTTrainer with our token-level KL penalty towards a frozen reference.

A tiny GPT-2 built from a config and our byte-level tokenizer, saved with ``save_pretrained`` and
loaded back as a user would (nothing is downloaded), on prompt/completion pairs: TRL tokenizes
them and puts -100 on the prompt, so the loss and the penalty are taken on the completion only.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("trl", reason="TRL's SFTTrainer (the [lm] extra)")
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: E402

from forgetting.errors import BadInput  # noqa: E402
from forgetting.models.causal import byte_tokenizer  # noqa: E402

PAIRS = [("great phone, works well. Sentiment:", " positive"), ("battery died in a day. Sentiment:", " negative"),
         ("the food was cold. Sentiment:", " negative"), ("loved every minute. Sentiment:", " positive"),
         ("sound is crisp and clear. Sentiment:", " positive"), ("broke after a week. Sentiment:", " negative"),
         ("service was slow. Sentiment:", " negative"), ("best purchase this year. Sentiment:", " positive")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Two tiny GPT-2s (the model, and another for a reference that differs from it) and their tokenizer."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tok = byte_tokenizer()
    for seed, name in ((0, "model"), (1, "other")):
        torch.manual_seed(seed)
        GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                   bos_token_id=256, eos_token_id=256, pad_token_id=257)).save_pretrained(path / name)
        tok.save_pretrained(path / name)
    return path


def load(checkpoint, name="model", **overrides):
    return (AutoModelForCausalLM.from_pretrained(checkpoint / name, **overrides),
            AutoTokenizer.from_pretrained(checkpoint / name))


def dataset():
    import datasets

    return datasets.Dataset.from_dict({"prompt": [p for p, _ in PAIRS], "completion": [c for _, c in PAIRS]})


def config(tmp_path, **kw):
    from trl import SFTConfig

    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-2, max_steps=3,
                logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False, disable_tqdm=True,
                seed=0, dataloader_num_workers=0, gradient_checkpointing=False, loss_type="nll", max_length=64)
    base.update(kw)
    return SFTConfig(**base)


def test_loss_is_sft_loss_plus_lambda_times_token_kl_by_hand(tmp_path, checkpoint):
    from forgetting.integrations.trl import KLRegularizedSFTTrainer

    model, tok = load(checkpoint)
    ref, _ = load(checkpoint, "other")
    trainer = KLRegularizedSFTTrainer(model=model, args=config(tmp_path), train_dataset=dataset(),
                                      processing_class=tok, ref_model=ref, kl_lambda=0.7, kl_direction="reverse",
                                      temperature=2.0)
    assert trainer.ref_model is ref and not ref.training and not any(p.requires_grad for p in ref.parameters())
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    labels = batch["labels"]
    mask = labels[:, 1:] != -100
    assert 0 < mask.sum() < batch["attention_mask"][:, 1:].sum()  # completion only: the prompt carries no loss
    model.eval()  # no dropout: the computation by hand sees the same logits
    tokens = mask.sum()
    losses = [trainer.compute_loss(model, batch), trainer.compute_loss(model, batch, num_items_in_batch=tokens)]
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits, ref_logits = model(**inputs).logits.double(), ref(**inputs).logits.double()
        lp, lq = logits[:, :-1][mask], ref_logits[:, :-1][mask]  # [tokens, vocabulary], the next-token positions
        ce = F.cross_entropy(lp, labels[:, 1:][mask])
        p, q = F.log_softmax(lp / 2, -1), F.log_softmax(lq / 2, -1)
        kl = (p.exp() * (p - q)).sum(-1).mean() * 4  # reverse KL(p_model || p_ref) at T = 2, times T^2
    assert kl > 1e-3
    for loss in losses:
        assert loss.item() == pytest.approx((ce + 0.7 * kl).item(), rel=1e-5)


def test_training_leaves_the_reference_unchanged_and_logs_the_parts(tmp_path, checkpoint):
    from forgetting.integrations.trl import KLRegularizedSFTTrainer

    model, tok = load(checkpoint, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # step 1: the model is its snapshot
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = KLRegularizedSFTTrainer(model=model, args=config(tmp_path), train_dataset=dataset(),
                                      processing_class=tok, kl_lambda=0.5)
    ref = trainer.ref_model
    assert ref is not trainer.model
    trainer.train()

    assert not ref.training and all(not p.requires_grad and p.grad is None for p in ref.parameters())
    assert all(torch.equal(v, before[k]) for k, v in ref.state_dict().items())  # bitwise: the snapshot of the start
    assert not all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():  # the reference runs its own forward: the start's logits, not the trained model's
        start = load(checkpoint)[0].eval()(**inputs).logits
        assert torch.allclose(ref(**inputs).logits, start, rtol=0, atol=1e-6)
        assert not torch.allclose(trainer.model.eval()(**inputs).logits, start, rtol=0, atol=1e-3)
    logs = [h for h in trainer.state.log_history if "kl" in h]
    assert [h["step"] for h in logs] == [1, 2, 3]
    assert logs[0]["kl"] < 1e-6 < logs[2]["kl"]  # 0 while the model is the snapshot, then it moves
    for h in logs:
        assert h["loss"] == pytest.approx(h["ce"] + 0.5 * h["kl"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lambda_zero_is_plain_sft_step_for_step(tmp_path, checkpoint, accumulate):
    """TRL computes its loss through a fused LM head, ours from the full logits: equal up to float rounding,
    also when gradients are accumulated over batches (both divide by the accumulated batch's token count)."""
    from trl import SFTTrainer

    from forgetting.integrations.trl import KLRegularizedSFTTrainer

    weights, losses = [], []
    for make in (SFTTrainer, lambda **kw: KLRegularizedSFTTrainer(kl_lambda=0.0, **kw)):
        model, tok = load(checkpoint)  # dropout 0.1 on: both runs draw the same masks from the same seed
        args = config(tmp_path, per_device_train_batch_size=4 // accumulate, gradient_accumulation_steps=accumulate)
        trainer = make(model=model, args=args, train_dataset=dataset(), processing_class=tok)
        trainer.train()
        weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        losses.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert len(losses[0]) == 3 and losses[1] == pytest.approx(losses[0], rel=1e-5)
    moved = [k for k, v in weights[0].items() if not torch.equal(v, load(checkpoint)[0].state_dict()[k])]
    assert moved and all(torch.allclose(weights[0][k], weights[1][k], rtol=0, atol=1e-5) for k in weights[0])


def test_a_model_given_by_name_needs_a_reference(tmp_path, checkpoint):
    from forgetting.integrations.trl import KLRegularizedSFTTrainer

    with pytest.raises(ValueError, match="is a name; pass the loaded model"):
        KLRegularizedSFTTrainer(model=str(checkpoint / "model"), args=config(tmp_path), train_dataset=dataset())


def test_without_trl_the_import_names_the_extra(monkeypatch):
    import forgetting.extras

    real = forgetting.extras.find_spec
    monkeypatch.setattr(forgetting.extras, "find_spec", lambda m: None if m == "trl" else real(m))
    monkeypatch.delitem(sys.modules, "forgetting.integrations.trl", raising=False)
    with pytest.raises(BadInput, match=r"KLRegularizedSFTTrainer .* needs the \[lm\] extra \(trl not installed\)"):
        import forgetting.integrations.trl  # noqa: F401
