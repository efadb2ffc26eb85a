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


# --- ForgettingCallback: a TRL run's old tasks and KL drift as a harness run ----------------------------------
OLD = {"sentiment": PAIRS[:4], "reviews": PAIRS[4:]}
NEW = ("arithmetic", [("2+2=", "4"), ("3+1=", "4"), ("1+2=", "3"), ("2+1=", "3")])


def _rows(cb):
    from forgetting.results import read_metrics_csv

    return read_metrics_csv(cb.run_dir / "metrics.csv")


def _token_kl_by_hand(model, ref, tok, pairs) -> float:
    """Mean over the response tokens (and end-of-text) of KL(p_ref || p_model), float64, one sequence at a time."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for prompt, response in pairs:
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = torch.tensor([[tok.bos_token_id, *p, *r]])
            at = slice(len(p), len(p) + len(r))  # the positions whose next token is a response token
            lp = F.log_softmax(model.eval()(ids).logits[0, at].double(), -1)
            lq = F.log_softmax(ref.eval()(ids).logits[0, at].double(), -1)
            total += float((lq.exp() * (lq - lp)).sum())
            tokens += len(r)
    return total / tokens


def test_forgetting_callback_on_sft_writes_the_harness_rows_and_leaves_the_reference_untouched(tmp_path, checkpoint):
    from trl import SFTTrainer

    from forgetting.integrations.trl import ForgettingCallback
    from forgetting.metrics import run_summary
    from forgetting.report_runs import load_runs

    model, tok = load(checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = ForgettingCallback(model, OLD, NEW, results_dir=tmp_path / "results", figures=False)
    ref = cb.reference
    trainer = SFTTrainer(model=model, args=config(tmp_path, max_steps=2), train_dataset=dataset(),
                         processing_class=tok, callbacks=[cb])
    trainer.train()

    assert not ref.training and all(not p.requires_grad and p.grad is None for p in ref.parameters())
    assert all(torch.equal(v, before[k]) for k, v in ref.state_dict().items())  # bitwise the model before training
    assert not all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    rows = _rows(cb)
    points = rows[["phase", "trained_task", "epoch", "global_step"]].drop_duplicates().values.tolist()
    assert points == [["init", -1, 0, 0], ["epoch", 0, 1, 0], ["step", 1, 1, 1], ["step", 1, 1, 2], ["epoch", 1, 1, 2]]
    # at each point: the base task, the trained one, one measured only
    assert rows["eval_task_name"].tolist() == ["trl[sentiment]", "trl[arithmetic]", "trl[reviews]"] * 5
    assert rows["eval_only"].fillna(0).tolist() == [0, 0, 1] * 5
    assert rows.loc[rows["phase"] != "step", "kl_base"].iloc[:6].isna().all()  # as the harness: none before the boundary
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    step = rows[rows["phase"] == "step"]
    assert step["train_loss"].tolist() == pytest.approx([losses[s] for s in step["global_step"]], rel=1e-12)
    assert step["trainer_kl"].isna().all() and step["trainer_kl_estimator"].isna().all()  # SFTTrainer logs no KL
    final = rows[rows["phase"] == "epoch"].iloc[3:]
    for name, pairs in (("sentiment", OLD["sentiment"]), ("arithmetic", NEW[1]), ("reviews", OLD["reviews"])):
        kl = final.loc[final["eval_task_name"] == f"trl[{name}]", "kl_base"].item()
        assert kl > 1e-4 and kl == pytest.approx(_token_kl_by_hand(model, ref, tok, pairs), rel=1e-4)
    [run] = load_runs([tmp_path / "results"])  # what forgetting.plot reads: complete, two tasks learned
    assert run.complete and run.run_id == cb.run_dir.name and run.n_tasks == 2 and run.method == "trl-sft"
    A = rows[rows["phase"] == "epoch"].pivot_table(index="trained_task", columns="eval_task", values="accuracy")
    summary = run_summary(rows, run.tasks_completed)
    assert summary["forgetting_first"] == pytest.approx(A.loc[0, 0] - A.loc[1, 0])
    assert summary["kl_new_task"] == final.loc[final["eval_task"] == 1, "kl_base"].item()


def test_forgetting_callback_changes_nothing_in_training(tmp_path, checkpoint):
    """Dropout on: the evaluations between steps draw no random numbers and leave the model's mode as it was."""
    from trl import SFTTrainer

    from forgetting.integrations.trl import ForgettingCallback

    weights = []
    for with_callback in (False, True):
        model, tok = load(checkpoint)
        callbacks = [ForgettingCallback(model, OLD, NEW, results_dir=tmp_path / "r", figures=False)] if with_callback else []
        SFTTrainer(model=model, args=config(tmp_path, max_steps=2), train_dataset=dataset(), processing_class=tok,
                   callbacks=callbacks).train()
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _grpo_args(tmp_path, **kw):
    from trl import GRPOConfig

    base = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=2,
                max_completion_length=3, learning_rate=1e-2, beta=0.1, use_cpu=True, bf16=False, report_to=[],
                save_strategy="no", logging_steps=5, disable_tqdm=True, seed=0, gradient_checkpointing=False)
    base.update(kw)
    return GRPOConfig(**base)


def test_forgetting_callback_on_grpo_puts_trls_k3_kl_beside_ours(tmp_path, checkpoint):
    import datasets
    from trl import GRPOTrainer

    from forgetting.integrations.trl import ForgettingCallback

    model, tok = load(checkpoint)  # GRPO loads its own reference from the checkpoint (beta > 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = ForgettingCallback(model, {"sentiment": OLD["sentiment"]}, NEW, results_dir=tmp_path / "results",
                            eval_steps=1, figures=False)
    prompts = datasets.Dataset.from_dict({"prompt": [p for p, _ in NEW[1]]})
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [float("4" in c) for c in completions],
                          args=_grpo_args(tmp_path), train_dataset=prompts, processing_class=tok, callbacks=[cb])
    trainer.train()

    assert all(torch.equal(v, before[k]) for k, v in cb.reference.state_dict().items())
    rows = _rows(cb)
    step = rows[rows["phase"] == "step"]
    assert step["global_step"].tolist() == [1, 1, 2, 2]  # eval_steps=1 made the trainer log at every step
    kls = {h["step"]: h["kl"] for h in trainer.state.log_history if "kl" in h}
    assert sorted(kls) == [1, 2] and kls[2] > 0
    assert step["trainer_kl"].tolist() == pytest.approx([kls[s] for s in step["global_step"]], rel=1e-12)
    assert step["trainer_kl_estimator"].str.startswith("k3 per token at the policy's sampled completions: "
                                                       "KL(pi_theta||pi_ref)").all()
    assert (step["kl_base"] > 0).all() and cb.writer.manifest["status"] == "complete"
    assert rows["method"].unique().tolist() == ["trl-grpo"] and rows["lambda"].unique().tolist() == [0.1]


def test_forgetting_callback_on_dpo_names_its_chosen_log_ratio(tmp_path, checkpoint):
    import datasets
    from trl import DPOConfig, DPOTrainer

    from forgetting.integrations.trl import ForgettingCallback

    model, tok = load(checkpoint)
    cb = ForgettingCallback(model, {"sentiment": OLD["sentiment"]}, NEW, results_dir=tmp_path / "results",
                            eval_steps=2, figures=False)
    prefs = datasets.Dataset.from_dict({"prompt": [p for p, _ in NEW[1]], "chosen": [r for _, r in NEW[1]],
                                        "rejected": ["5"] * 4})
    args = DPOConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                     beta=0.1, use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=1,
                     disable_tqdm=True, seed=0, gradient_checkpointing=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=prefs, processing_class=tok, callbacks=[cb])
    trainer.train()  # one step an epoch, a log at every step, evaluations at step 2 and the last

    rows = _rows(cb)
    step, end = rows.query("phase == 'step'"), rows.query("phase == 'epoch' and trained_task == 1")
    chosen = {h["step"]: h["rewards/chosen"] for h in trainer.state.log_history if "rewards/chosen" in h}
    assert sorted(chosen) == [1, 2, 3] and step["global_step"].tolist() == [2, 2, 3, 3]
    assert step["epoch"].tolist() == [2, 2, 3, 3] and end["epoch"].tolist() == [3, 3]
    assert step["trainer_kl"].tolist() == pytest.approx([chosen[s] / 0.1 for s in step["global_step"]], rel=1e-9)
    assert chosen[3] != 0 and step["trainer_kl_estimator"].str.contains("k1 summed over the chosen response").all()
    last = step[step["global_step"] == 3]
    for column in ("kl_base", "accuracy", "nll", "trainer_kl", "train_loss"):  # the boundary is the last log's model
        assert end[column].tolist() == last[column].tolist()
    assert rows["method"].unique().tolist() == ["trl-dpo"]


def test_the_kl_a_trainer_logs_is_named_with_its_estimator(tmp_path, checkpoint):
    """KLRegularizedSFTTrainer tells the callback its penalty; GRPO without beta and SFT log no KL."""
    from forgetting.integrations.trl import ForgettingCallback, KLRegularizedSFTTrainer
    from forgetting.integrations.trl_kl import trainer_kl

    model, tok = load(checkpoint)
    cb = ForgettingCallback(model, OLD, NEW, results_dir=tmp_path, figures=False)
    KLRegularizedSFTTrainer(model=model, args=config(tmp_path), train_dataset=dataset(), processing_class=tok,
                            kl_lambda=0.3, kl_direction="reverse", callbacks=[cb])
    assert cb.penalty == {"direction": "reverse", "temperature": 1.0, "kl_lambda": 0.3}
    value, name = trainer_kl(config(tmp_path), {"loss": 1.0, "kl": 0.25}, cb.penalty)
    assert value == 0.25 and name.startswith("exact KL(pi_theta||pi_ref) per token over the vocabulary")
    assert trainer_kl(_grpo_args(tmp_path, beta=0.0), {"loss": 1.0})[1] == ""
    nan, none = trainer_kl(config(tmp_path), {"loss": 1.0, "kl": 0.25})  # plain SFTTrainer: a "kl" is not its
    assert nan != nan and none == ""


def test_forgetting_callback_refuses_bad_tasks_in_one_line(tmp_path, checkpoint):
    from forgetting.integrations.trl import ForgettingCallback

    model, tok = load(checkpoint)
    for old, new, match in (({"a": {"prompt": ["x"], "answer": ["y"]}}, NEW, r"columns \['prompt', 'answer'\], allowed"),
                            ({"a": [("x", {"role": "user"})]}, NEW, "a response is dict, allowed: strings"),
                            ({}, NEW, "old_tasks {}, allowed"), (OLD, NEW[1], "new_task of type list, allowed"),
                            ({"arithmetic": PAIRS}, NEW, "a task name is given twice")):
        with pytest.raises(BadInput, match=match):
            ForgettingCallback(model, old, new)
    from transformers import TrainerControl, TrainerState

    cb = ForgettingCallback(model, OLD, NEW, results_dir=tmp_path / "results", figures=False)
    begin = dict(args=config(tmp_path), control=TrainerControl(), processing_class=tok)  # what Trainer.train passes
    with pytest.raises(BadInput, match="trains another model than the one given to the callback"):
        cb.on_train_begin(state=TrainerState(), model=load(checkpoint, "other")[0], **begin)
    with pytest.raises(BadInput, match="the trainer resumes at step 3, allowed: a run from step 0"):
        cb.on_train_begin(state=TrainerState(global_step=3), model=model, **begin)
    assert not (tmp_path / "results").exists()  # nothing written
