"""The classification objective's pieces by hand (``objectives/classification.py``; float64, tiny cases): the KL
penalty's rows, defaults and output positions, the teacher's outputs under a launcher, the sampled answers and
their log-probabilities, the correct-answer sets and the oracle targets' loss in the task and class scenarios."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from forgetting.objectives.classification import Classification, teacher_outputs
from forgetting.policy_gradient import sample_answers
from forgetting.streams.base import Batch, HeadLayout, TensorData

from test_class_incremental import _old_form, _padded_form

T = 2.0
REL = 1e-6  # the objective computes in float32: exact to its rounding (abs 1e-6 where a KL is small)


def _batch(task_ids, targets=None):
    n = len(task_ids)
    targets = [0] * n if targets is None else targets
    return Batch(torch.arange(n, dtype=torch.float64)[:, None], torch.tensor(targets), torch.tensor(task_ids),
                 torch.arange(n))


def _logits(n, outputs, seed):
    return torch.randn(n, outputs, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2


def _kl(teacher, student, old, active=None):
    """Forward KL at temperature T times T^2, mean over the rows, by hand (tests/test_class_incremental.py's forms):
    p over the teacher's ``old`` outputs, q over the student's ``active`` ones (None: the same ``old`` ones)."""
    rows = zip(student.tolist(), teacher.tolist())
    forms = [_old_form(s, t, old, T) if active is None else _padded_form(s, t, old, active, T) for s, t in rows]
    return sum(forms) / len(forms)


def _refusing_teacher(batch):
    raise AssertionError("the teacher was run")


def test_class_kl_defaults_to_the_padded_form_at_the_old_outputs_positions_among_the_active_ones():
    # task 1's active outputs are [0, 1, 4, 5]; the teacher knew task 0's [4, 5], at positions 2, 3 among them
    layout = HeadLayout("class", [[4, 5], [0, 1], [2, 3]], 6)
    objective = Classification(layout)
    student, teacher = _logits(3, 6, 0), _logits(3, 6, 1)
    batch = _batch([1, 1, 1])
    got = objective.penalty_kl(student, batch, 1, lambda b: teacher, None, direction="forward", temperature=T)
    assert float(got) == pytest.approx(_kl(teacher, student, [4, 5], [0, 1, 4, 5]), rel=REL, abs=1e-6)
    old = objective.penalty_kl(student, batch, 1, lambda b: teacher, None, direction="forward", temperature=T,
                               class_outputs="old")
    assert float(old) == pytest.approx(_kl(teacher, student, [4, 5]), rel=REL, abs=1e-6)


def test_the_kl_holds_the_new_tasks_rows_only_unless_asked_and_is_a_float32_zero_without_them():
    layout = HeadLayout("task", [[0, 1], [2, 3]], 4)
    objective = Classification(layout)
    student, teacher = _logits(3, 4, 2), _logits(3, 4, 3)
    options = dict(direction="forward", temperature=T)
    got = objective.penalty_kl(student, _batch([1, 0, 1]), 1, lambda b: teacher, None, **options)
    assert float(got) == pytest.approx(_kl(teacher[[0, 2]], student[[0, 2]], [0, 1]), rel=REL, abs=1e-6)
    every = objective.penalty_kl(student, _batch([1, 0, 1]), 1, lambda b: teacher, None, on_replayed=True, **options)
    assert float(every) == pytest.approx(_kl(teacher, student, [0, 1]), rel=REL, abs=1e-6)
    one = objective.penalty_kl(student, _batch([0, 1, 0]), 1, lambda b: teacher, None, **options)
    assert float(one) == pytest.approx(_kl(teacher[[1]], student[[1]], [0, 1]), rel=REL, abs=1e-6)
    none = objective.penalty_kl(student, _batch([0, 0, 0]), 1, _refusing_teacher, None, **options)
    assert none.shape == () and none.dtype == torch.float32 and float(none) == 0.0


class _Teacher(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x, -x, x * x], dim=1).to(torch.float64)


def _world(part, gathered):
    return SimpleNamespace(distributed=True, part=part, gather_rows=lambda x: gathered.append(x) or x * 0 + 7)


def test_under_a_launcher_the_teacher_runs_on_this_ranks_part_and_every_rank_gets_the_gathered_rows():
    data = TensorData(torch.arange(5, dtype=torch.float64)[:, None], torch.zeros(5))
    gathered = []
    out = teacher_outputs(_Teacher(), data, 0, 2, "cpu", _world(lambda index: index[3:], gathered))
    (mine,) = gathered
    x = torch.tensor([[3.0], [4.0]])
    assert mine.dtype == torch.float32 and torch.equal(mine, torch.cat([x, -x, x * x], dim=1))
    assert torch.equal(out, mine * 0 + 7)  # what the gather returns
    rng = torch.get_rng_state()
    cache = Classification(HeadLayout("domain", [[0, 1, 2]], 3)).teacher_cache(
        _Teacher(), data, 0, 2, "cpu", _world(lambda index: index[:0], gathered))
    assert gathered[1].shape == (0, 3) and gathered[1].dtype == torch.float32  # no rows, the outputs' width
    assert cache.task == 0 and torch.equal(cache.outputs, gathered[1])
    assert torch.equal(torch.get_rng_state(), rng)  # the width's pass draws nothing
    alone = teacher_outputs(_Teacher(), data, 0, 2, "cpu")
    assert len(gathered) == 2 and torch.equal(alone, _Teacher()(data.inputs).float())


def test_answers_are_drawn_from_the_runs_generator_over_the_allowed_outputs_at_the_temperature():
    layout = HeadLayout("class", [[0, 1], [2, 3], [4, 5]], 6)
    objective = Classification(layout)
    logits = torch.tensor([[0.0, -30.0, 60.0, 60.0, 90.0, 90.0]] * 2, dtype=torch.float64)
    model = lambda inputs: logits  # noqa: E731
    batch = _batch([0, 0])
    answers, log_probs = objective.sample_answers(model, batch, 0, 64, torch.Generator().manual_seed(3),
                                                  temperature=100.0, max_new_tokens=0)
    assert log_probs is None and answers.shape == (2, 64)
    assert set(answers.unique().tolist()) == {0, 1}  # task 0's outputs only, both drawn at temperature 100
    expected = sample_answers(logits, 64, torch.Generator().manual_seed(3),
                              allowed=torch.tensor([True, True, False, False, False, False]), temperature=100.0)
    assert torch.equal(answers, expected)
    again, log_probs = objective.sample_answers(model, batch, 0, 64, torch.Generator().manual_seed(3),
                                                temperature=100.0, max_new_tokens=0, log_probs=True)
    assert torch.equal(again, answers)
    by_hand = torch.log_softmax(logits[:, :2] / 100.0, dim=1).gather(1, answers)
    torch.testing.assert_close(log_probs, by_hand.float(), rtol=REL, atol=1e-7)


def test_answer_log_probs_are_over_each_examples_outputs_at_the_temperature():
    answers = torch.tensor([[0, 1], [1, 1]])
    task = Classification(HeadLayout("task", [[0, 1], [2, 3]], 4))
    logits = _logits(2, 4, 4)
    got = task.class_log_probs(logits, _batch([0, 1]), 1, torch.tensor([[0, 1], [3, 2]]), T)
    by_hand = torch.stack([torch.log_softmax(logits[0, :2] / T, 0)[[0, 1]],
                           torch.log_softmax(logits[1, 2:] / T, 0)[[1, 0]]])
    torch.testing.assert_close(got, by_hand.float(), rtol=REL, atol=1e-7)
    seen = Classification(HeadLayout("class", [[0, 1], [2, 3], [4, 5]], 6))
    logits = _logits(2, 6, 5)
    out, log_probs, extra = seen.answer_log_probs(lambda inputs: logits, _batch([1, 1]), 1, answers, temperature=T)
    assert out is logits and extra is None
    by_hand = torch.log_softmax(logits[:, :4] / T, 1).gather(1, answers).float()
    torch.testing.assert_close(log_probs, by_hand, rtol=REL, atol=1e-7)


def test_correct_answers_are_each_tasks_answer_set_where_it_has_one_else_the_target():
    objective = Classification(HeadLayout("domain", [[0, 1, 2], [0, 1, 2]], 3))
    table = torch.tensor([[True, True, False], [False, False, True], [False, True, True]])  # [targets, outputs]
    stream = SimpleNamespace(tasks=[SimpleNamespace(), SimpleNamespace(answers=table)])  # task 0: no answer sets
    batch = _batch([1, 0, 1, 0], targets=[0, 2, 2, 1])
    right = objective.correct_sets(batch, stream)
    assert right.tolist() == [[True, True, False], [False, False, True], [False, True, True], [False, True, False]]
    answers = torch.tensor([[1], [2], [0], [1]])
    assert objective.correct(answers, batch, stream).squeeze(1).tolist() == [True, True, False, True]


@pytest.mark.parametrize("scenario", ["task", "class"])
def test_the_oracle_loss_is_the_cross_entropy_against_the_reference_on_the_correct_answers(scenario):
    layout = HeadLayout(scenario, [[0, 1, 2], [3, 4, 5]], 6)
    objective = Classification(layout)
    table = torch.zeros(6, 6, dtype=torch.bool)
    table[3, [3, 4]] = table[5, [4, 5, 0]] = True  # output 0 is correct for target 5 but not task 1's
    stream = SimpleNamespace(tasks=[SimpleNamespace(answers=None), SimpleNamespace(answers=table)])
    batch = _batch([1, 1], targets=[3, 5])
    student, reference = _logits(2, 6, 6), _logits(2, 6, 7)
    got = objective.oracle_loss(student, batch, 1, lambda inputs: reference, stream)
    # task: each row predicts among its head, 3-5; class: every output is active once task 1 is seen, so output 0
    # is one of row 1's correct answers there
    allowed = [3, 4, 5] if scenario == "task" else list(range(6))
    loss = 0.0
    for row, outs in enumerate([[3, 4], [4, 5] if scenario == "task" else [0, 4, 5]]):
        q = torch.softmax(reference[row, outs], 0)
        log_p = torch.log_softmax(student[row, allowed], 0)[[allowed.index(o) for o in outs]]
        loss -= float((q * log_p).sum()) / 2
    assert float(got) == pytest.approx(loss, rel=REL, abs=1e-6)  # taken in float32
    # task 0 (no answer sets: the target alone) predicts among outputs 0-2 in both scenarios
    first = objective.oracle_loss(student[:1], _batch([0], targets=[1]), 0, lambda inputs: reference[:1], stream)
    assert float(first) == pytest.approx(-float(torch.log_softmax(student[0, :3], 0)[1]), rel=REL, abs=1e-6)


def test_the_evaluator_takes_every_test_example_unless_a_subset_is_asked(tmp_path):
    from forgetting.preparing import prepare
    from forgetting.registry import make_config

    _, stream, _, _ = prepare(make_config(method="naive", results_dir=str(tmp_path), epochs=1, progress=False))
    objective = Classification(stream.layout)
    assert all(i is None for i in objective.evaluator(stream, 8, "cpu").index)
    assert [len(i) for i in objective.evaluator(stream, 8, "cpu", subset=3).index] == [3] * len(stream.tasks)
