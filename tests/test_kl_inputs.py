"""``kl --kl-inputs data|policy|base`` and ``--kl-estimator exact|k1|k2|k3`` on a tiny GPT-2: values against float64
hand computations on the sequences in use, the reference's context-free samples seeded by (seed, task) and drawn
without reading any data, one-line refusals, and today's run ids untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgetting.errors import BadInput
from forgetting.kl_estimators import exact_kl, sampled_kl
from forgetting.methods.kl import Method as KL
from forgetting.objectives.causal_lm import sampling
from forgetting.registry import make_config
from forgetting.streams import iterate_batches

from test_lm import pairs_stream, trainer_for

NO_DROPOUT = {"gpt2_dropout": 0.0}


def at_task_1(tmp_path, **hparams):
    """A kl trainer on the pairs stream at the boundary after task 0, the student moved away from the reference."""
    stream = pairs_stream(tmp_path)
    trainer = trainer_for(stream, "kl", model_options=NO_DROPOUT, **hparams)
    trainer.snapshot_boundary(0)
    trainer.current_task = 1
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    method = trainer.methods[0]
    method.before_task(trainer, 1)
    batch = next(iter(iterate_batches(stream.tasks[1].train, 1, 4, shuffle=False)))
    return trainer, method, batch


def hand_log_probs(model, tokens):
    """float64 next-token log-distributions of one unpadded sequence: [len - 1, vocabulary]."""
    with torch.no_grad():
        logits = model({"input_ids": torch.tensor([tokens]), "attention_mask": torch.ones(1, len(tokens),
                                                                                          dtype=torch.long)})
    return torch.log_softmax(logits[0, :-1].double(), -1)


def hand_kl(trainer, seqs, estimator="exact", direction="forward"):
    """The mean over every scored token of the sequences of the KL (exact: over the vocabulary; else the
    estimator at the token, P = the teacher for forward, the student for reverse), float64, one sequence at a time."""
    values = []
    for tokens, first in seqs:
        s, t = hand_log_probs(trainer.model, tokens), hand_log_probs(trainer.previous_model, tokens)
        rows = slice(first - 1, len(tokens) - 1)
        s, t = s[rows], t[rows]
        p, q = (t, s) if direction == "forward" else (s, t)
        if estimator == "exact":
            values.append(exact_kl(p, q))
        else:
            at = torch.tensor(tokens[first:])[:, None]
            values.append(sampled_kl(p.gather(1, at), q.gather(1, at), estimator).squeeze(1))
    return float(torch.cat(values).mean())


def test_defaults_keep_todays_run_ids_and_new_values_change_them():
    plain = make_config(method="kl", epochs=1)
    same = make_config(method="kl", epochs=1, hparams={"kl_inputs": "data", "kl_estimator": "exact"})
    assert same.run_id == plain.run_id
    assert not {"kl_inputs", "kl_estimator", "kl_samples", "kl_sample_temperature"} & set(plain.method.options)
    lm = dict(benchmark="text-file", model="gpt2", method="kl", epochs=1)
    base = make_config(**lm, hparams={"kl_inputs": "base"})
    assert base.run_id != make_config(**lm).run_id and base.method.options["kl_samples"] == 16
    assert make_config(**lm, hparams={"kl_inputs": "base", "kl_samples": 4}).run_id != base.run_id
    k3 = make_config(**lm, hparams={"kl_estimator": "k3"})
    assert k3.method.options["kl_estimator"] == "k3" and "kl_samples" not in k3.method.options


@pytest.mark.parametrize("hparams, message", [
    ({"kl_inputs": "base"}, r"^--kl-inputs base: applies to causal LMs only, not to classifiers .*allowed: data$"),
    ({"kl_inputs": "policy"}, r"^--kl-inputs policy: applies to causal LMs only"),
    ({"kl_estimator": "k3"}, r"^--kl-estimator k3: applies to causal LMs only.*allowed: exact$"),
    ({"kl_inputs": "nope"}, r"--kl-inputs.*nope.*data, policy, base"),
])
def test_classifiers_refuse_policy_base_and_sampled_estimators_in_one_line(hparams, message):
    with pytest.raises(BadInput, match=message) as e:
        make_config(method="kl", hparams=hparams)
    assert "\n" not in str(e.value)


def test_sampling_options_need_the_inputs_that_use_them():
    lm = dict(benchmark="text-file", model="gpt2", method="kl")
    with pytest.raises(BadInput, match=r"^--kl-samples: applies to --kl-inputs base only \(this run: policy\)$"):
        make_config(**lm, hparams={"kl_inputs": "policy", "kl_samples": 4})
    with pytest.raises(BadInput, match=r"^--kl-sample-temperature: applies to --kl-inputs policy or base only"):
        make_config(**lm, hparams={"kl_sample_temperature": 0.5})


def test_cli_refuses_base_inputs_on_a_classifier_with_exit_2(cli, tmp_path):
    out = cli("forgetting.run", "--method", "kl", "--kl-inputs", "base", "--results-dir", str(tmp_path / "r"))
    assert out.returncode == 2
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "--kl-inputs base: applies to causal LMs only" in lines[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("estimator", ["exact", "k1", "k2", "k3"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_each_estimator_on_data_inputs_is_the_kl_estimators_function_at_the_target_tokens(tmp_path, estimator,
                                                                                           direction):
    trainer, method, batch = at_task_1(tmp_path, kl_estimator=estimator, kl_direction=direction)
    assert method.cache is not None  # the cached teacher, then the live one: the same value
    logits = trainer.model(batch.inputs)
    got = method.penalties(trainer, batch, logits, 1)["kl"][0]
    method.cache = None
    live = method.penalties(trainer, batch, logits, 1)["kl"][0]
    ids, labels, mask = (batch.inputs[k] for k in ("input_ids", "labels", "attention_mask"))
    seqs = []
    for j in range(len(ids)):
        n = int(mask[j].sum())
        first = int((labels[j, :n] != -100).nonzero()[0])
        seqs.append((ids[j, :n].tolist(), first))
    want = hand_kl(trainer, seqs, estimator, direction)
    assert float(got.detach()) == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert float(live) == pytest.approx(want, rel=1e-4, abs=1e-6)
    got.backward()  # the gradient reaches the student, never the reference
    assert any(p.grad is not None for p in trainer.model.parameters())
    assert all(p.grad is None for p in trainer.previous_model.parameters())


@pytest.mark.parametrize("estimator, temperature", [("exact", 1.0), ("k3", 1.5)])
def test_policy_kl_is_the_token_kl_on_the_students_own_completions(tmp_path, estimator, temperature):
    trainer, method, batch = at_task_1(tmp_path, kl_inputs="policy", kl_estimator=estimator, kl_max_new_tokens=5,
                                       kl_direction="reverse", kl_sample_temperature=temperature)
    reference = {k: v.clone() for k, v in trainer.previous_model.state_dict().items()}
    generator = torch.Generator().set_state(trainer.generator.get_state())
    logits = trainer.model(batch.inputs)
    got = method.penalties(trainer, batch, logits, 1)["kl"][0]
    assert trainer.model.training and not trainer.previous_model.training
    # the same draw by hand: the student in eval mode, the seed from the loop's generator
    prompts, _ = sampling.split_batch(batch.inputs)
    cfg = trainer.model.lm.config
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    trainer.model.eval()
    drawn = sampling.generate(trainer.model, prompts, 1, seed, temperature=temperature, max_new_tokens=5,
                              pad_id=cfg.pad_token_id, eos_id=cfg.eos_token_id, device="cpu")
    if temperature != 1.0:  # the option reaches the sampler: at T = 1 the draw differs
        assert drawn != sampling.generate(trainer.model, prompts, 1, seed, temperature=1.0, max_new_tokens=5,
                                          pad_id=cfg.pad_token_id, eos_id=cfg.eos_token_id, device="cpu")
    trainer.model.train()
    seqs = [(p + g[0], len(p)) for p, g in zip(prompts, drawn)]
    assert float(got) == pytest.approx(hand_kl(trainer, seqs, estimator, "reverse"), rel=1e-4, abs=1e-6)
    teacher_drawn = sampling.generate(trainer.previous_model, prompts, 1, seed, temperature=temperature,
                                      max_new_tokens=5,
                                      pad_id=cfg.pad_token_id, eos_id=cfg.eos_token_id, device="cpu")
    assert teacher_drawn != drawn  # the completions are the student's, not the reference's
    got.backward()
    assert all(p.grad is None for p in trainer.previous_model.parameters())
    assert all(torch.equal(v, trainer.previous_model.state_dict()[k]) for k, v in reference.items())


class Untouchable:
    """Old-task data that raises if anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"old-task data read ({name})")

    def __len__(self):
        raise AssertionError("old-task data read (len)")


def test_base_samples_repeat_per_seed_and_task_differ_across_seeds_and_read_no_data(tmp_path):
    stream = pairs_stream(tmp_path)
    trainer = trainer_for(stream, "kl", model_options=NO_DROPOUT, kl_inputs="base", kl_samples=5,
                          kl_max_new_tokens=6, kl_sample_temperature=0.25)
    trainer.snapshot_boundary(0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    for task in stream.tasks:
        task.train = Untouchable()  # no task's data may be read (the batch below is built by hand)
    method = trainer.methods[0]
    generator_state = trainer.generator.get_state()
    method.before_task(trainer, 1)
    first = method.base
    bos = trainer.model.lm.config.bos_token_id
    assert len(first) == 5 and all(t[0] == bos and s == 1 and 2 <= len(t) <= 7 for t, s in first)
    assert torch.equal(trainer.generator.get_state(), generator_state)  # the loop's generator is not used
    method.before_task(trainer, 1)
    assert method.base == first  # a resumed run draws the same
    cfg = trainer.model.lm.config
    by_hand = {t: sampling.generate(trainer.previous_model, [[bos]], 5, KL.base_seed(trainer.config.seed, 1),
                                    temperature=t, max_new_tokens=6, pad_id=cfg.pad_token_id,
                                    eos_id=cfg.eos_token_id, device="cpu")[0] for t in (0.25, 1.0)}
    assert [t[1:] for t, _ in first] == by_hand[0.25]  # drawn from the reference, not the student
    assert by_hand[1.0] != by_hand[0.25]  # at the option's temperature (the untrained reference is near uniform:
    # at T = 1.5 its draw is T = 1's)
    method.before_task(trainer, 2)
    assert method.base != first  # a new draw at each task
    trainer.config.loop["seed"] = trainer.config.seed + 1
    method.before_task(trainer, 1)
    assert method.base != first
    trainer.config.loop["seed"] -= 1
    method.before_task(trainer, 1)
    ids = torch.tensor([[bos, 5, 6]])
    batch = type("B", (), {"inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids)}})()
    assert method.base_reference is not None  # the reference's logits on the samples, kept for the task
    got = method.penalties(trainer, batch, None, 1)["kl"][0]
    assert float(got.detach()) == pytest.approx(hand_kl(trainer, first), rel=1e-4, abs=1e-6)
    method.base_reference = None
    assert torch.equal(method.penalties(trainer, batch, None, 1)["kl"][0].detach(), got.detach())  # live: the same


def test_the_base_seed_is_a_draw_below_2_62_seeded_by_seed_and_task():
    """The documented function of (seed, task) alone: a rerun or a resumed run of a run id draws the same samples."""
    for seed, task in [(0, 1), (0, 2), (3, 1)]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + task)
        assert KL.base_seed(seed, task) == int(torch.randint(0, 2**62, (1,), generator=g))
    seeds = {KL.base_seed(s, t) for s in range(3) for t in range(1, 4)}
    assert len(seeds) == 9 and all(0 <= s < 2**62 for s in seeds)


def test_the_base_references_cache_limit_is_samples_times_length_times_vocabulary_times_4_bytes(tmp_path, caplog):
    """The reference's logits on the context-free samples are kept at exactly their size in MB (samples x (longest
    - 1) x vocabulary x 4 / 2^20), not just below it."""
    import logging

    stream = pairs_stream(tmp_path)
    trainer = trainer_for(stream, "kl", model_options=NO_DROPOUT, kl_inputs="base", kl_samples=3, kl_max_new_tokens=4)
    trainer.snapshot_boundary(0)
    method = trainer.methods[0]
    with caplog.at_level(logging.INFO, logger="forgetting"):
        method.before_task(trainer, 1)
    assert [r.getMessage() for r in caplog.records] == ["kl inputs for task 1: 3 context-free samples of the reference"]
    assert method.base_reference is not None
    ids = torch.tensor([[trainer.model.lm.config.bos_token_id, 5, 6]])
    batch = type("B", (), {"inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids)}})()
    calls = []
    hook = trainer.previous_model.register_forward_hook(lambda *args: calls.append(1))
    try:  # the kept logits serve the penalty: the reference is not run
        kept = method.penalties(trainer, batch, None, 1)["kl"][0]
        assert calls == []
        method.base_reference = None
        assert torch.allclose(method.penalties(trainer, batch, None, 1)["kl"][0], kept) and calls == [1]
    finally:
        hook.remove()
    size_mb = len(method.base) * (max(len(t) for t, _ in method.base) - 1) * trainer.layout.n_outputs * 4 / 2**20
    method.hparams["teacher_cache_mb"] = size_mb
    method.before_task(trainer, 1)
    assert method.base_reference is not None
    method.hparams["teacher_cache_mb"] = float(np.nextafter(size_mb, 0.0))
    method.before_task(trainer, 1)
    assert method.base is not None and method.base_reference is None
    method.hparams["teacher_cache_mb"], method.hparams["teacher_cache"] = size_mb, False  # --no-teacher-cache
    method.before_task(trainer, 1)
    assert method.base is not None and method.base_reference is None


@pytest.mark.parametrize("hparams", [{"kl_inputs": "base", "kl_samples": 3, "kl_max_new_tokens": 4},
                                     {"kl_inputs": "policy", "kl_max_new_tokens": 3, "kl_estimator": "k3"}])
def test_runs_with_sampled_kl_inputs_resume_bitwise_from_a_boundary(tmp_path, monkeypatch, hparams):
    """Tiny GPT-2 on three prompt/response tasks: killed after task 1 and resumed, the rows equal an uninterrupted
    run's (the base samples are redrawn from (seed, task); the policy's from the loop's saved generator)."""
    from conftest import resumed_equals_whole
    from forgetting.results import read_run
    from test_lm import TINY, write_pairs

    write_pairs(tmp_path / "pairs.csv", n=6)
    cfg = make_config(benchmark="text-file", model="gpt2", method="kl", epochs=1, batch_size=6, lr=3e-3, device="cpu",
                      progress=False, model_options=TINY, results_dir=str(tmp_path / "cut"), hparams=hparams,
                      stream_options={"text_file": str(tmp_path / "pairs.csv"), "prompt_column": "prompt",
                                      "response_column": "response", "max_seq_len": 40})
    run_dir = resumed_equals_whole(cfg, tmp_path, monkeypatch)
    rows = read_run(run_dir)[1]
    assert set(rows.trained_task) == {-1, 0, 1, 2}


def test_base_samples_of_a_lora_run_come_from_the_model_with_its_adapters_disabled(tmp_path):
    stream = pairs_stream(tmp_path)
    trainer = trainer_for(stream, "kl", model_options={**NO_DROPOUT, "lora_rank": 2}, kl_inputs="base",
                          kl_samples=4, kl_max_new_tokens=6)
    trainer.snapshot_boundary(0)
    method = trainer.methods[0]
    method.before_task(trainer, 1)
    first = method.base
    with torch.no_grad():  # the adapters move the student; the reference and its samples stay
        for name, p in trainer.model.named_parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
    trainer.model.train()
    method.before_task(trainer, 1)
    assert method.base == first and trainer.model.training
    ids = torch.tensor([[trainer.model.lm.config.bos_token_id, 5, 6]])
    batch = type("B", (), {"inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids)}})()
    assert float(method.penalties(trainer, batch, None, 1)["kl"][0].detach()) > 0


def test_after_a_task_the_method_lets_go_of_its_cache_and_base_samples():
    """The teacher cache and the reference's samples and logits are the task's: freed at its end (None, as before
    the first task), not kept in memory through the evaluation."""
    method = KL(kl_lambda=1.0)
    assert (method.cache, method.base, method.base_reference) == (None, None, None)
    method.cache, method.base, method.base_reference = object(), [([1, 2], 1)], torch.zeros(1)
    method.after_task(None, 1)
    assert (method.cache, method.base, method.base_reference) == (None, None, None)


def test_the_teacher_cache_is_computed_in_parts_only_under_a_launcher():
    """The objective's ``teacher_cache`` is handed the run's ``world`` only when it is distributed: on one process (no
    world, or a world of one) a user's objective whose ``teacher_cache`` takes no ``world`` still works."""
    from types import SimpleNamespace

    calls = []

    class Objective:
        cache_unit = "examples"

        def cache_rows(self, data):
            return len(data)

        def teacher_cache(self, teacher, data, task, batch_size, device, **parts):
            calls.append((teacher, data, task, batch_size, device, parts))
            return "cache"

    def trainer(**world):
        return SimpleNamespace(stream=SimpleNamespace(deterministic_inputs=True, tasks=[None, SimpleNamespace(
            train=range(6))]), previous_model=SimpleNamespace(training=False), objective=Objective(),
            layout=SimpleNamespace(n_outputs=4), config=SimpleNamespace(eval_batch_size=3), device="cpu", **world)

    method = KL(**{o.name: o.default for o in KL.options})
    launched = SimpleNamespace(distributed=True)
    for world, parts in [({}, {}), ({"world": SimpleNamespace(distributed=False)}, {}), ({"world": None}, {}),
                         ({"world": launched}, {"world": launched})]:
        t = trainer(**world)
        calls.clear()
        method.before_task(t, 1)
        assert method.cache == "cache" and calls == [(t.previous_model, t.stream.tasks[1].train, 1, 3, "cpu", parts)]
