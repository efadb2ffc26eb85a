"""The causal-LM objective's pieces (``objectives/causal_lm/__init__.py``) on a tiny GPT-2 with a byte vocabulary:
the teacher's outputs under a launcher, the Fisher's seed, mean and unused parameters, the refusals and the warning
of on-policy sampling, the completions and their log-probabilities against ``sampling``'s own, and a model without
a padding token."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from forgetting.errors import BadInput
from forgetting.objectives.causal_lm import CausalLM, LMData, lm_fisher, lm_teacher_outputs, sampling
from forgetting.registry import build_model
from forgetting.streams.base import Batch, iterate_batches

from test_lm import TINY, pairs_stream
from test_lm_fisher import PROMPTS, RESPONSES, ewc_trainer, hand_fisher

EOS = 256


def _model(stream, seed=0):
    torch.manual_seed(seed)
    return build_model("gpt2", stream, TINY).eval()  # no dropout: passes repeat


def test_under_a_launcher_the_lm_teacher_runs_on_this_ranks_part_and_every_rank_gets_the_gathered_rows(tmp_path):
    stream = pairs_stream(tmp_path)
    model, data = _model(stream), stream.tasks[0].train
    alone, offsets = lm_teacher_outputs(model, data, 0, 4, "cpu")
    n, gathered = len(data), []
    world = SimpleNamespace(distributed=True, part=lambda index: index[n - 2:],
                            gather_rows=lambda x: gathered.append(x) or alone)
    flat, got_offsets = lm_teacher_outputs(model, data, 0, 4, "cpu", world)
    (mine,) = gathered
    assert flat is alone and torch.equal(got_offsets, offsets)
    assert mine.dtype == torch.float32 and mine.shape == alone[int(offsets[n - 2]):].shape
    torch.testing.assert_close(mine, alone[int(offsets[n - 2]):], rtol=1e-5, atol=1e-5)  # its two examples' rows
    rng = torch.get_rng_state()
    world.part = lambda index: index[:0]  # fewer examples than ranks
    lm_teacher_outputs(model, data, 0, 4, "cpu", world)
    assert gathered[1].shape == (0, alone.shape[1]) and gathered[1].dtype == torch.float32
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_lm_fisher_is_seeded_by_the_task_a_mean_even_of_one_sequence_and_zero_where_unused(tmp_path):
    trainer = ewc_trainer(tmp_path, "true")
    model, data, tokenizer = trainer.model, trainer.stream.tasks[0].train, trainer.stream.tokenizer
    fisher = lm_fisher(model, data, 1, "true", "cpu")
    for name, e in hand_fisher(model, tokenizer, "true", task=1).items():
        assert torch.allclose(fisher[name].double(), e, rtol=1e-4, atol=1e-6 * float(e.abs().max()) + 1e-12), name
    one = LMData(PROMPTS[:1], RESPONSES[:1], torch.zeros(1), tokenizer)
    twice = LMData(PROMPTS[:1] * 2, RESPONSES[:1] * 2, torch.zeros(2), tokenizer)
    model.register_parameter("unused", torch.nn.Parameter(torch.ones(3)))
    f1, f2 = lm_fisher(model, one, 0, "empirical", "cpu"), lm_fisher(model, twice, 0, "empirical", "cpu")
    assert torch.equal(f1["unused"], torch.zeros(3)) and sum(float(v.sum()) for v in f1.values()) > 0
    for name in f1:
        torch.testing.assert_close(f1[name], f2[name], rtol=1e-5, atol=1e-9)


def test_pg_needs_completion_tasks_in_one_line():
    message = ("--objective pg: language-modelling tasks (--lm-task lm, what auto gives without a "
               "--response-column) have no answer to sample and reward; allowed: --lm-task completion")
    for refused in ({}, {"lm_task": "auto"}, {"lm_task": "lm", "response_column": "answer"}):
        with pytest.raises(BadInput) as e:
            CausalLM.check_answers(refused)
        assert str(e.value) == message
    for allowed in ({"response_column": "answer"}, {"lm_task": "completion"}):
        CausalLM.check_answers(allowed)


def _batch(stream, prompts, responses):
    """A completion batch as the streams make it (``LMData``: <bos> prompt response, right-padded, labels on the
    response)."""
    data = LMData(prompts, responses, torch.zeros(len(prompts)), stream.tokenizer)
    return next(iterate_batches(data, 0, len(prompts), shuffle=False))


def _sample(objective, model, batch, max_new_tokens=2, **kw):
    return objective.sample_answers(model, batch, 0, 1, torch.Generator().manual_seed(0), temperature=1.0,
                                    max_new_tokens=max_new_tokens, **kw)


def test_sampling_refuses_tasks_without_prompts_or_responses_in_one_line(tmp_path):
    stream = pairs_stream(tmp_path)
    model, objective = _model(stream), CausalLM(stream.layout, stream.info)
    message = ("--objective pg: a causal LM's task needs prompts and responses to sample and reward "
               "(a language-modelling task has none); allowed: --lm-task completion")
    for prompts, responses in (([[104], [104]], [[49], []]), ([[104], []], [[49], [50]])):
        with pytest.raises(BadInput) as e:
            _sample(objective, model, _batch(stream, prompts, responses))
        assert str(e.value) == message
    completions, _ = _sample(objective, model, _batch(stream, [[104]], [[49]]), max_new_tokens=1)  # the shortest
    assert len(completions) == 1 and len(completions[0]) == 1


def test_a_budget_shorter_than_the_responses_is_warned_once_counting_tokens_before_the_end_of_text(tmp_path, caplog):
    stream = pairs_stream(tmp_path)
    model = _model(stream)
    batch = _batch(stream, [[104, 105], [120]], [[49, 50, EOS], [51, 52, 53, EOS]])
    warning = ("--pg-max-new-tokens 2 is shorter than responses of up to 3 tokens before their end-of-text token "
               "(a byte-level tokenizer takes one per byte): those are never matched, their reward is 0")
    with caplog.at_level(logging.WARNING, logger="forgetting"):
        objective = CausalLM(stream.layout, stream.info)
        _sample(objective, model, batch, max_new_tokens=3)  # the longest response without its end-of-text token
        assert not [r for r in caplog.records if "pg-max-new-tokens" in r.getMessage()]
        _sample(objective, model, batch, max_new_tokens=2)
        _sample(objective, model, batch, max_new_tokens=2)
    assert [r.getMessage() for r in caplog.records if "pg-max-new-tokens" in r.getMessage()] == [warning]


def _expected(model, prompts, groups, generator_seed, temperature, max_new_tokens, pad):
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(generator_seed)))
    return sampling.generate(model, prompts, groups, seed, temperature=temperature, max_new_tokens=max_new_tokens,
                             pad_id=pad, eos_id=model.lm.config.eos_token_id, device="cpu")


@pytest.mark.parametrize("pad_token", ["set", "none"])
def test_completions_and_their_log_probs_are_samplings_own_from_a_draw_of_the_runs_generator(tmp_path, pad_token):
    stream = pairs_stream(tmp_path)
    model, objective = _model(stream), CausalLM(stream.layout, stream.info)
    if pad_token == "none":  # a model without a padding token pads with its end-of-text token
        model.lm.config.pad_token_id = None
    pad = model.lm.config.pad_token_id if pad_token == "set" else model.lm.config.eos_token_id
    batch = next(iterate_batches(stream.tasks[0].train, 0, 3, shuffle=False))
    prompts, _ = sampling.split_batch(batch.inputs)
    generator = torch.Generator().manual_seed(7)
    completions, old = objective.sample_answers(model, batch, 0, 2, generator, temperature=0.7, max_new_tokens=4)
    assert old is None
    assert completions == _expected(model, prompts, 2, 7, 0.7, 4, pad)
    again, old = objective.sample_answers(model, batch, 0, 2, torch.Generator().manual_seed(7), temperature=0.7,
                                          max_new_tokens=4, log_probs=True)
    assert again == completions
    by_hand = sampling.completion_log_probs(model, prompts, completions, temperature=0.7, pad_id=pad, device="cpu")
    assert torch.equal(old, by_hand[0])
    logits, log_probs, mask = objective.answer_log_probs(model, batch, 0, completions, temperature=0.7)
    assert torch.equal(log_probs, by_hand[0]) and torch.equal(mask, by_hand[1])
    assert torch.equal(logits, model(batch.inputs))


def test_generation_stops_at_the_models_end_of_text_token(tmp_path):
    stream = pairs_stream(tmp_path)
    model, objective = _model(stream), CausalLM(stream.layout, stream.info)
    batch = _batch(stream, [[104, 105]], [[49]])
    with torch.no_grad():  # the token the model all but surely draws first, made its end-of-text token
        first = int(model(batch.inputs)[0, 2].argmax())
    model.lm.config.eos_token_id = first
    completions, _ = objective.sample_answers(model, batch, 0, 3, torch.Generator().manual_seed(0),
                                              temperature=0.01, max_new_tokens=5)
    assert completions == [[[first]] * 3]


def test_the_loss_units_are_the_tokens_that_carry_loss_and_choices_are_read_per_task(tmp_path):
    stream = pairs_stream(tmp_path)
    objective = CausalLM(stream.layout, stream.info)
    assert objective.loss_units(_batch(stream, [[104, 105], [120]], [[49, 50, EOS], [51, EOS]])) == 5
    tok = stream.tokenizer
    enc = lambda text: list(text.encode())  # noqa: E731  (the byte tokenizer)
    tasks = [SimpleNamespace(train=SimpleNamespace(choices=[enc(" yes"), enc(" no")], tokenizer=tok)),
             SimpleNamespace(train=SimpleNamespace(choices=[enc(" red"), enc(" blue")], tokenizer=tok))]
    batch = Batch({}, torch.zeros(2, dtype=torch.long), torch.tensor([1, 0]), torch.arange(2))
    answers = [[enc(" blue"), enc(" yes")], [enc(" no"), enc(" red")]]
    assert objective.chosen(answers, batch, SimpleNamespace(tasks=tasks)).tolist() == [[1, -1], [1, -1]]


def test_the_lm_caches_chunk_is_the_batch_bounded_by_16m_logits_and_its_arguments_pass_through(tmp_path, monkeypatch):
    import forgetting.objectives.causal_lm as causal_lm

    stream = pairs_stream(tmp_path)
    calls = []

    def outputs(teacher, data, task, size, device, world=None):
        calls.append((teacher, data, task, size, device, world))
        return torch.zeros(1, 258), torch.tensor([0, 1])

    monkeypatch.setattr(causal_lm, "lm_teacher_outputs", outputs)
    world = SimpleNamespace(distributed=True)
    # 2**24 floats of logits: 40 x 258 a row allows 1625 rows; 26010 x 258 allows 2.5; 2**20 x 258 none
    for length, size in ((40, 8), (26010, 2), (2**20, 1)):
        objective = CausalLM(stream.layout, {**stream.info, "max_seq_len": length})
        cache = objective.teacher_cache("teacher", "data", 3, 8, "device", world)
        assert calls[-1] == ("teacher", "data", 3, size, "device", world) and type(calls[-1][3]) is int
        assert cache.task == 3 and cache.outputs.shape == (1, 258) and cache.offsets.tolist() == [0, 1]


@pytest.mark.parametrize("estimator", ["exact", "k3"])
def test_the_lm_kl_reads_the_cache_where_it_holds_the_batch_and_estimators_see_the_next_tokens(tmp_path, estimator):
    from forgetting.penalty import token_kl_estimate

    stream = pairs_stream(tmp_path)
    student, teacher = _model(stream), _model(stream, seed=1)
    objective = CausalLM(stream.layout, stream.info)
    data = stream.tasks[1].train
    cache = objective.teacher_cache(teacher, data, 1, 4, "cpu")
    batch = next(iterate_batches(data, 1, 3, shuffle=True, generator=torch.Generator().manual_seed(0)))
    logits = student(batch.inputs)
    options = dict(direction="forward", temperature=1.0, estimator=estimator)
    live = objective.penalty_kl(logits, batch, 1, lambda b: teacher(b.inputs), None, **options)
    cached = objective.penalty_kl(logits, batch, 1, lambda b: pytest.fail("the live teacher ran"), cache, **options)
    labels = batch.inputs["labels"]
    with torch.no_grad():
        t_logits = teacher(batch.inputs)
    by_hand = token_kl_estimate(logits[:, :-1], t_logits[:, :-1], labels[:, 1:], labels[:, 1:] != -100, **options)
    assert float(live.detach()) > 0
    torch.testing.assert_close(live, by_hand, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cached, by_hand, rtol=1e-4, atol=1e-6)


def test_the_lm_evaluator_takes_every_test_example_unless_a_subset_is_asked(tmp_path):
    stream = pairs_stream(tmp_path)
    objective = CausalLM(stream.layout, stream.info)
    sizes = [len(t.test) for t in stream.tasks]
    assert [len(i) for i in objective.evaluator(stream, 4, "cpu").index] == sizes
    assert min(sizes) > 1
    assert [len(i) for i in objective.evaluator(stream, 4, "cpu", subset=1).index] == [1] * len(sizes)


def test_the_padding_and_begin_of_text_tokens_fall_back_to_the_end_of_text_token():
    def ids(bos, eos, pad):
        model = SimpleNamespace(lm=SimpleNamespace(config=SimpleNamespace(bos_token_id=bos, eos_token_id=eos,
                                                                          pad_token_id=pad)))
        return CausalLM._ids(model)

    assert ids(1, 2, 3) == (1, 2, 3)
    assert ids(None, 2, None) == (2, 2, 2)
    assert ids(1, 2, None) == (1, 2, 2) and ids(None, 2, 3) == (2, 2, 3)


def test_base_samples_start_at_the_begin_of_text_token_and_stop_at_the_end_of_text_token(tmp_path):
    stream = pairs_stream(tmp_path)
    model, objective = _model(stream), CausalLM(stream.layout, stream.info)
    bos = model.lm.config.bos_token_id
    with torch.no_grad():  # the token the model all but surely draws first, made its end-of-text token
        first = int(model({"input_ids": torch.tensor([[bos]]), "attention_mask": torch.ones(1, 1, dtype=torch.long)})
                    [0, 0].argmax())
    model.lm.config.bos_token_id, model.lm.config.eos_token_id = bos, first
    samples = objective.base_sequences(model, 3, 0, temperature=0.01, max_new_tokens=5, device="cpu")
    assert samples == [([bos, first], 1)] * 3


def test_the_kl_on_sequences_is_the_token_kl_at_their_scored_tokens_at_the_temperature(tmp_path):
    from forgetting.penalty import token_kl_estimate

    stream = pairs_stream(tmp_path)
    student, teacher, objective = _model(stream), _model(stream, seed=1), CausalLM(stream.layout, stream.info)
    seqs = [([EOS, 104, 105, 49], 2), ([EOS, 120, 50, 51, 52], 1)]
    inputs, tokens, scored = sampling.pack(seqs, student.lm.config.pad_token_id, "cpu")
    with torch.no_grad():
        reference = teacher(inputs)[:, :-1]
    for estimator in ("exact", "k3"):
        got = objective.sequences_kl(student, teacher, seqs, direction="forward", temperature=2.0, estimator=estimator,
                                     device="cpu")
        by_hand = token_kl_estimate(student(inputs)[:, :-1], reference, tokens, scored, direction="forward",
                                    temperature=2.0, estimator=estimator)
        assert float(got.detach()) > 0
        torch.testing.assert_close(got, by_hand, rtol=1e-5, atol=1e-7)
