"""Causal LMs through the harness: models, LM streams, the frozen reference, lambda=0, LoRA, EWC, bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from forgetting.objectives.causal_lm import loss_mask, shifted
from forgetting.errors import BadInput
from forgetting.registry import build_methods, build_model, make_config, tokenizer_maker
from forgetting.models.causal import AdapterDisabled, byte_tokenizer
from forgetting.penalty import token_kl_penalty
from forgetting.run import main, prepare
from forgetting.streams import build_stream, iterate_batches
from forgetting.teacher import frozen_copy
from forgetting.train import Trainer

TINY = {"gpt2_layers": 1, "gpt2_width": 16, "gpt2_heads": 2, "gpt2_dropout": 0.1}
WORDS = ["good", "bad", "fine", "awful", "great", "poor"]


def write_pairs(path, n=12, long_response=False):
    """A prompt/response CSV of two tasks: 'add one' and 'repeat' on small numbers."""
    lines = ["task,prompt,response"]
    for i in range(n):
        lines.append(f"plus,what is {i} plus one?,{' ' + str(i + 1) if not long_response else ' ' + 'x' * 40}")
        lines.append(f"echo,say {WORDS[i % 6]},{' ' + WORDS[i % 6]}")
        lines.append(f"twice,what is {i} times two?, {2 * i}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_texts(path, n=16):
    lines = ["task,text,label"]
    for i in range(n):
        lines.append(f"a,the {WORDS[i % 6]} phone number {i},{i % 2}")
        lines.append(f"b,a {WORDS[(i + 3) % 6]} film of {i} scenes,{i % 2}")
    path.write_text("\n".join(lines) + "\n")
    return path


def pairs_stream(tmp_path, model="gpt2", **extra):
    opts = {"text_file": str(write_pairs(tmp_path / "pairs.csv")), "prompt_column": "prompt",
            "response_column": "response", "tokenizer": tokenizer_maker(model), "max_seq_len": 40, **extra}
    return build_stream("text-file", "domain", opts)


def config(method="kl", **hparams):
    return make_config(benchmark="text-file", model="gpt2", method=method, epochs=1, batch_size=8, lr=3e-3,
                       hparams=hparams, device="cpu", progress=False)


def trainer_for(stream, method="kl", model_options=None, **hparams):
    torch.manual_seed(0)
    model = build_model("gpt2", stream, {**TINY, **(model_options or {})})
    cfg = config(method, **hparams)
    return Trainer(cfg, stream, model, build_methods(method, cfg.hparams), torch.device("cpu"))


def test_lm_streams_mask_prompt_and_padding(tmp_path):
    stream = pairs_stream(tmp_path)
    assert stream.info["lm_task"] == "completion" and stream.layout.n_outputs == 258
    data = stream.tasks[1].train
    inputs, targets = data.gather(torch.arange(len(data)))
    tok = stream.tokenizer
    for j in range(len(data)):
        ids, labels, mask = inputs["input_ids"][j], inputs["labels"][j], inputs["attention_mask"][j]
        n = int(mask.sum())
        assert ids[0] == tok.eos_token_id and torch.all(ids[n:] == tok.pad_token_id) and torch.all(labels[n:] == -100)
        text = tok.decode(ids[:n])
        prompt, response = text[len("<|endoftext|>"):].split(" ", 2)[0:2], tok.decode(labels[labels != -100])
        assert text.startswith("<|endoftext|>say ") and response.endswith("<|endoftext|>")
        assert text.endswith(response) and response.strip().removesuffix("<|endoftext|>") in WORDS
        assert stream.tasks[1].classes[int(targets[j])] == response.strip().removesuffix("<|endoftext|>").strip()
    lm = build_stream("text-file", "domain", {"text_file": str(write_texts(tmp_path / "t.csv")),
                                             "tokenizer": tokenizer_maker("gpt2"), "max_seq_len": 40})
    inputs, _ = lm.tasks[0].train.gather(torch.arange(2))
    n = int(inputs["attention_mask"][0].sum())
    assert torch.equal(inputs["labels"][0, 1:n], inputs["input_ids"][0, 1:n]) and inputs["labels"][0, 0] == -100


def test_reference_is_frozen_unchanged_and_gets_no_gradient(tmp_path):
    stream = pairs_stream(tmp_path)
    trainer = trainer_for(stream, kl_lambda=1.0)
    trainer.train_task(0)
    teacher = trainer.previous_model
    assert teacher is not trainer.model and trainer.base_model is teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append((torch.is_grad_enabled(), m.training, o.requires_grad)))
    trainer.train_task(1)
    assert len(calls) >= 2 and all(c == (False, False, False) for c in calls)
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()), "the reference changed"
    assert any(not torch.equal(student_before[k], v) for k, v in trainer.model.state_dict().items())


def test_lambda_zero_equals_plain_causal_lm_fine_tuning(tmp_path):
    stream = pairs_stream(tmp_path)
    trainer = trainer_for(stream, kl_lambda=0.0)
    trainer.train_task(0)
    plain = copy.deepcopy(trainer.model.lm)
    gen_state, rng_state = trainer.generator.get_state(), torch.get_rng_state()
    trainer.train_task(1)
    # by hand: the same batches, Hugging Face's own causal-LM loss, Adam
    g = torch.Generator()
    g.set_state(gen_state)
    torch.set_rng_state(rng_state)
    plain.train()
    opt = torch.optim.Adam(plain.parameters(), lr=3e-3)
    for batch in iterate_batches(stream.tasks[1].train, 1, 8, shuffle=True, generator=g):
        loss = plain(**batch.inputs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    for (name, a), b in zip(trainer.model.lm.named_parameters(), plain.parameters()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (name, float((a - b).abs().max()))


def test_saved_checkpoint_loads_through_causal_path_with_its_tokenizer(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = byte_tokenizer()
    torch.manual_seed(1)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=256,
                                    eos_token_id=256, pad_token_id=257))
    ckpt = tmp_path / "ckpt"
    lm.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    stream = pairs_stream(tmp_path, model=f"causal:{ckpt}")
    assert stream.info["tokenizer_source"] == str(ckpt) and stream.tokenizer.pad_token_id == tok.pad_token_id
    model = build_model(f"causal:{ckpt}", stream, {})
    for (name, a), b in zip(model.lm.state_dict().items(), lm.state_dict().values()):
        assert torch.equal(a, b), name
    inputs, _ = stream.tasks[0].test.gather(torch.arange(len(stream.tasks[0].test)))
    lm.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(model(inputs), lm(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits)
    with pytest.raises(BadInput, match="exceeds the 64 positions"):
        build_model(f"causal:{ckpt}", pairs_stream(tmp_path, model=f"causal:{ckpt}", max_seq_len=80), {})


def test_lora_trains_only_adapters_and_its_reference_equals_a_frozen_copy(tmp_path):
    pytest.importorskip("peft")
    stream = pairs_stream(tmp_path)
    trainer = trainer_for(stream, model_options={"lora_rank": 4}, kl_lambda=1.0)
    trainer.train_task(0)
    assert isinstance(trainer.previous_model, AdapterDisabled) and not list(trainer.previous_model.parameters())
    copy0 = trainer.base_model  # a frozen copy taken before the adapters
    base_weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    trainer.optimizer = trainer.new_optimizer()
    for m in trainer.methods:
        m.before_task(trainer, 1)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    for batch in iterate_batches(stream.tasks[1].train, 1, 8, shuffle=False):
        trainer.step(batch, 1, 1)
    for n, p in trainer.model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_weights[n]), f"{n} changed under LoRA"
    assert any(not torch.equal(p, lora_before[n]) for n, p in trainer.model.named_parameters() if "lora_B" in n)

    batch = next(iterate_batches(stream.tasks[1].train, 1, 8, shuffle=False))
    labels = batch.inputs["labels"]
    trainer.model.train()
    student = trainer.model(batch.inputs)
    kl = [token_kl_penalty(shifted(student, labels)[0], shifted(ref(batch.inputs), labels)[0], loss_mask(labels))
          for ref in (trainer.previous_model, copy0)]
    assert kl[0].item() > 0 and torch.allclose(kl[0], kl[1], rtol=1e-5)
    # at the next boundary the adapters are merged: the new reference equals a frozen copy of the merged model
    for m in trainer.methods:
        m.after_task(trainer, 1)
    trainer.snapshot_boundary(1)
    merged = frozen_copy(trainer.model)
    with torch.no_grad():
        a, b = trainer.previous_model(batch.inputs), merged(batch.inputs)
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, copy0(batch.inputs), atol=1e-3)


@pytest.mark.parametrize("method", ["ewc", "kl+replay", "joint", "si", "l2sp"])
def test_methods_run_on_a_causal_lm(tmp_path, method):
    stream = pairs_stream(tmp_path)
    trainer = trainer_for(stream, method)
    trainer.fit()
    assert trainer.global_step > 0
    rows = trainer.record("epoch", 1, 1, 0.0)
    assert all(r["nll"] > 0 and r["perplexity"] == pytest.approx(torch.tensor(r["nll"]).exp().item(), rel=1e-5)
               for r in rows)
    assert all(0 <= r["answer_accuracy"] <= 1 and 0 <= r["exact_match"] <= 1 and r["kl_base"] >= 0 for r in rows)


def test_lm_rows_measure_the_base_model_itself_as_zero_drift(tmp_path):
    stream = pairs_stream(tmp_path)
    trainer = trainer_for(stream, "naive")
    trainer.train_task(0)
    rows = trainer.evaluator.evaluate(trainer.model, trainer.base_model)
    assert all(r["kl_base"] == pytest.approx(0.0, abs=1e-6) for r in rows)
    row = rows[1]
    assert row["accuracy"] == row["answer_accuracy"] and row["n_tokens"] > row["n_eval"]


def tiny_checkpoint(path, pad=True, model="gpt2"):
    from transformers import DistilBertConfig, DistilBertModel, GPT2Config, GPT2LMHeadModel

    tok = byte_tokenizer()
    if not pad:
        tok.pad_token = None
    if model == "gpt2":
        GPT2LMHeadModel(GPT2Config(vocab_size=258, n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=256, eos_token_id=256)).save_pretrained(path)
    else:
        DistilBertModel(DistilBertConfig(vocab_size=258, dim=16, n_layers=1, n_heads=2, hidden_dim=32)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def bad_not_causal(tmp):
    ckpt = tiny_checkpoint(tmp / "bert", model="distilbert")
    return ["--model", f"causal:{ckpt}", *pair_args(tmp)], "not a causal language model"


def bad_no_pad(tmp):
    ckpt = tiny_checkpoint(tmp / "nopad", pad=False)
    return ["--model", f"causal:{ckpt}", *pair_args(tmp)], "no pad token"


def bad_truncated_weights(tmp):
    ckpt = tiny_checkpoint(tmp / "cut")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # a copy that stopped early
    return ["--model", f"causal:{ckpt}", *pair_args(tmp)], "cannot read its weights"


def bad_no_tokenizer(tmp):
    ckpt = tiny_checkpoint(tmp / "alone")
    for f in ckpt.iterdir():  # the model saved without its tokenizer
        if f.name not in ("config.json", "generation_config.json", "model.safetensors"):
            f.unlink()
    return ["--model", f"causal:{ckpt}", *pair_args(tmp)], "no tokenizer files in"


def bad_prompt_column(tmp):
    return ["--model", "gpt2", *pair_args(tmp, prompt="question")], "no column 'question'"


def bad_long_response(tmp):
    write_pairs(tmp / "long.csv", long_response=True)
    return ["--model", "gpt2", *pair_args(tmp, file="long.csv")], "longer than the context"


def bad_rdrop(tmp):
    return ["--model", "gpt2", "--method", "rdrop", *pair_args(tmp)], "does not apply to causal LMs"


def bad_lora_ewc(tmp):
    return ["--model", "gpt2", "--method", "ewc", "--lora-rank", "2", *pair_args(tmp)], "fresh adapters"


def pair_args(tmp, prompt="prompt", file="pairs.csv"):
    if not (tmp / "pairs.csv").exists():
        write_pairs(tmp / "pairs.csv")
    return ["--benchmark", "text-file", "--text-file", str(tmp / file), "--prompt-column", prompt,
            "--response-column", "response", "--max-seq-len", "24", "--epochs", "1", "--device", "cpu"]


def bad_bf16_on_cpu(tmp):
    return ["--model", "gpt2", "--precision", "bf16", *pair_args(tmp)], "cuda only"


BAD = {"bf16 on cpu": bad_bf16_on_cpu, "not a causal LM": bad_not_causal, "tokenizer without pad": bad_no_pad, "prompt column missing":
       bad_prompt_column, "response longer than context": bad_long_response, "rdrop on an LM": bad_rdrop,
       "ewc with LoRA": bad_lora_ewc, "truncated weights": bad_truncated_weights, "no tokenizer": bad_no_tokenizer}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_lm_input_is_one_line_exit_2_nothing_written(name, tmp_path, capsys):
    argv, needle = BAD[name](tmp_path)
    capsys.readouterr()  # what building the test's checkpoint printed
    results = tmp_path / "results"
    assert main([*argv, "--results-dir", str(results), "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert not results.exists()


def test_a_run_of_a_causal_lm_writes_lm_rows(tmp_path, capsys):
    argv = ["--model", "gpt2", "--method", "kl", "--gpt2-layers", "1", "--gpt2-width", "16", "--gpt2-heads", "2",
            *pair_args(tmp_path), "--results-dir", str(tmp_path / "r"), "--quiet"]
    assert main(argv) == 0
    import pandas as pd

    (run,) = list((tmp_path / "r").iterdir())
    rows = pd.read_csv(run / "metrics.csv")
    assert rows["nll"].notna().all() and rows["exact_match"].notna().all()
    assert (rows.loc[rows["trained_task"] >= 1, "kl_base"].notna()).all()


def test_a_lora_run_resumes_to_the_same_rows(tmp_path, monkeypatch):
    pytest.importorskip("peft")
    from conftest import resumed_equals_whole

    write_pairs(tmp_path / "pairs.csv")
    cfg = make_config(benchmark="text-file", model="gpt2", method="kl", epochs=1, batch_size=8, lr=3e-3, device="cpu",
                      progress=False, model_options={**TINY, "lora_rank": 2}, results_dir=str(tmp_path / "cut"),
                      stream_options={"text_file": str(tmp_path / "pairs.csv"), "prompt_column": "prompt",
                                      "response_column": "response", "max_seq_len": 40})
    resumed_equals_whole(cfg, tmp_path, monkeypatch)


def test_kl_fit_gives_the_line_and_the_parabola_of_the_nll_rise():
    import numpy as np
    import pandas as pd

    from forgetting.report_summary import kl_fit

    x = np.array([0.0, 0.5, 1.0, 2.0, 3.0])
    table = pd.DataFrame({"status": "complete", "kl_new_task": x, "forgetting_max": 0.0,
                          "nll_forgetting_max": 1 + 2 * x + 3 * x * x})
    fit = kl_fit(table)
    assert fit["column"] == "nll_forgetting_max" and fit["n"] == 5
    slope, intercept = np.polyfit(x, 1 + 2 * x + 3 * x * x, 1)
    assert fit["slope"] == pytest.approx(slope) and fit["intercept"] == pytest.approx(intercept)
    q = fit["quad"]
    assert (q["c0"], q["c1"], q["c2"], q["r2"]) == pytest.approx((1, 2, 3, 1))
    assert fit["r2"] < 1


def test_lm_runs_plot_nll_curves_and_the_nll_summary(tmp_path):
    from forgetting.plot import write_report
    from forgetting.run import run_experiment

    write_pairs(tmp_path / "pairs.csv", n=8)
    for method, lam in (("naive", None), ("kl", 0.3), ("kl", 3.0)):
        cfg = make_config(benchmark="text-file", model="gpt2", method=method, epochs=1, batch_size=8, device="cpu",
                          progress=False, model_options=TINY, results_dir=str(tmp_path / "r"),
                          hparams={} if lam is None else {"kl_lambda": lam},
                          stream_options={"text_file": str(tmp_path / "pairs.csv"), "prompt_column": "prompt",
                                          "response_column": "response", "max_seq_len": 40})
        run_experiment(cfg)
    files = {p.name for p in write_report([tmp_path / "r"], tmp_path / "report")}
    assert {"nll_curves.png", "forgetting_curves.png", "kl_vs_forgetting.png", "summary.md"} <= files
    md = (tmp_path / "report" / "summary.md").read_text()
    # --model gpt2 reads bytes (its byte-level tokenizer): its NLL is per byte
    assert "NLL rise, max-based (nats/byte)" in md and "NLL rise (max-based) against KL drift" in md
    assert "nats/byte per nat" in md and "(95% t-interval)" in md and "nats/token" not in md


def test_lm_teacher_cache_gives_the_live_teachers_penalty(tmp_path):
    stream = pairs_stream(tmp_path)
    trainer = trainer_for(stream, kl_lambda=1.0)
    trainer.train_task(0)
    kl = trainer.methods[0]
    kl.before_task(trainer, 1)
    data = stream.tasks[1].train
    assert kl.cache is not None and kl.cache.outputs.shape == (sum(len(r) for r in data.responses), 258)
    trainer.model.train()
    torch.manual_seed(3)
    for batch in iterate_batches(data, 1, 5, shuffle=True, generator=torch.Generator().manual_seed(0)):
        torch.manual_seed(4)
        logits = trainer.model(batch.inputs)
        cached = kl.penalties(trainer, batch, logits, 1)["kl"][0]
        live_cache, kl.cache = kl.cache, None
        live = kl.penalties(trainer, batch, logits, 1)["kl"][0]
        kl.cache = live_cache
        assert cached.item() > 0 and torch.allclose(cached, live, rtol=1e-5, atol=1e-7)
    kl.hparams["teacher_cache_mb"] = 0.001
    kl.before_task(trainer, 1)
    assert kl.cache is None  # above --teacher-cache-mb: the live teacher


def test_uci_completion_tasks_use_the_sources_prompt_and_answer_words(data_dir):
    maker = tokenizer_maker("gpt2", {"lm_task": "completion"})
    stream = build_stream("uci-sentiment", "domain", {"data_dir": str(data_dir), "tokenizer": maker, "max_seq_len": 96,
                                                      "text_train_per_task": 20, "text_test_per_task": 10})
    assert [t.name for t in stream.tasks] == ["uci-sentiment[amazon]", "uci-sentiment[yelp]", "uci-sentiment[imdb]"]
    assert stream.info["lm_task"] == "completion" and stream.tasks[0].classes == ["negative", "positive"]
    data = stream.tasks[2].test
    inputs, targets = data.gather(torch.arange(len(data)))
    tok = stream.tokenizer
    for j in range(len(data)):
        labels = inputs["labels"][j]
        answer = tok.decode(labels[labels != -100])
        assert answer == [" negative", " positive"][int(targets[j])] + "<|endoftext|>"
        text = tok.decode(inputs["input_ids"][j][inputs["attention_mask"][j].bool()])
        cut = int(inputs["attention_mask"][j].sum()) == 96  # a long review loses its beginning, not its answer
        assert (text.startswith("<|endoftext|>Review: ") or cut) and text.endswith("\nSentiment:" + answer)
    assert [tok.decode(c) for c in data.choices] == [" negative<|endoftext|>", " positive<|endoftext|>"]


def write_corpus(path, n=12):
    """A plain corpus: text and task columns, no label."""
    lines = ["task,text"]
    for i in range(n):
        lines.append(f"a,the {WORDS[i % 6]} phone number {i}")
        lines.append(f"b,a {WORDS[(i + 3) % 6]} film of {i} scenes")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_text_file_without_labels_is_an_lm_corpus_for_a_causal_lm(tmp_path, capsys):
    corpus = str(write_corpus(tmp_path / "corpus.csv"))
    stream = build_stream("text-file", "domain", {"text_file": corpus, "tokenizer": tokenizer_maker("gpt2"),
                                                 "max_seq_len": 40})
    assert stream.objective == "causal-lm" and stream.info["lm_task"] == "lm"
    train = stream.tasks[0].train
    assert all(p == [] for p in train.prompts)  # language modelling: the loss on every token of the text
    texts = {stream.tokenizer.decode(r[:-1]) for r in train.responses}
    assert texts <= {f"the {WORDS[i % 6]} phone number {i}" for i in range(12)} and len(texts) == len(train)
    args = ["--benchmark", "text-file", "--text-file", corpus, "--device", "cpu", "--epochs", "1", "--quiet",
            "--results-dir", str(tmp_path / "r")]
    for argv, needle in ((["--model", "bert"], "--label-column: no column 'label'"),
                         (["--model", "gpt2", "--lm-task", "completion"], "has no label column")):
        capsys.readouterr()
        assert main([*args, *argv]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "r").exists()
