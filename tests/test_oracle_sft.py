"""Oracle SFT (``--sft-targets oracle``), the ``choice`` reward, and the loop options of the RL's Razor studies
(``--base-preview``, ``--learn-tasks``, ``--finetune-lr``, the ``weight_change`` column): hand values in float64."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from forgetting.errors import BadInput
from forgetting.oracle import oracle_targets, soft_cross_entropy
from forgetting.registry import make_config
from test_onpolicy import tiny_parity


def tiny_sft(mnist_dir, tmp_path, **options):
    return tiny_parity(mnist_dir, tmp_path, **{"objective": "sft", "pg_samples": 8, **options})


def test_oracle_targets_and_loss_by_hand():
    """Reference (0.1, 0.2, 0.3, 0.4), correct set {1, 3}: q = (0, 1/3, 0, 2/3); against a student (0.4, 0.3, 0.2,
    0.1) the loss is −(1/3 ln 0.3 + 2/3 ln 0.1) and its gradient in the logits softmax − q; an output the example may
    not predict (logit −inf, outside the set) adds nothing, not NaN; a set of one answer is the plain cross-entropy."""
    ref = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64).log()
    correct = torch.tensor([[False, True, False, True]])
    q = oracle_targets(ref, correct)
    assert torch.allclose(q, torch.tensor([[0.0, 1 / 3, 0.0, 2 / 3]], dtype=torch.float64), atol=1e-15)
    student = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64).log().requires_grad_()
    loss = soft_cross_entropy(student, q)
    assert float(loss.detach()) == pytest.approx(-(math.log(0.3) / 3 + 2 * math.log(0.1) / 3), abs=1e-14)
    loss.backward()
    assert torch.allclose(student.grad, torch.tensor([[0.4, 0.3 - 1 / 3, 0.2, 0.1 - 2 / 3]], dtype=torch.float64),
                          atol=1e-14)
    masked = torch.tensor([[float("-inf"), 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert float(soft_cross_entropy(masked, oracle_targets(ref, correct))) == pytest.approx(math.log(3), abs=1e-14)
    one = torch.tensor([[False, False, True, False]])
    assert float(soft_cross_entropy(student.detach(), oracle_targets(ref, one))) == pytest.approx(-math.log(0.2))
    with pytest.raises(ValueError, match="at least one correct answer"):
        oracle_targets(ref, torch.zeros(1, 4, dtype=torch.bool))


def test_oracle_sft_step_against_the_frozen_reference(mnist_dir, tmp_path):
    """A parity step with --sft-targets oracle: at the task's start (student = reference) the data loss is
    −Σ_{a ∈ correct} q(a) log p(a) = H(q) − log p(correct set), by hand from the reference's probabilities; the
    reference is bitwise unchanged, without gradient; the run id is today's at the default and new with oracle."""
    from forgetting.registry import build_methods, build_model
    from forgetting.streams import build_stream
    from forgetting.streams.parity import parity_answers
    from forgetting.teacher import frozen_copy
    from forgetting.train import Trainer

    plain = tiny_sft(mnist_dir, tmp_path)
    assert tiny_sft(mnist_dir, tmp_path, sft_targets="label").run_id == plain.run_id
    cfg = tiny_sft(mnist_dir, tmp_path, sft_targets="oracle", optimizer="sgd")
    assert cfg.run_id != plain.run_id and cfg.loop["sft_targets"] == "oracle"
    stream = build_stream("parity-mnist", "domain", {**cfg.stream_options, "data_dir": cfg.data_dir})
    model = build_model(cfg.model_name, stream, cfg.model_options)
    trainer = Trainer(cfg, stream, model, build_methods(cfg.method_name, cfg.hparams), torch.device("cpu"))
    trainer.previous_model = reference = frozen_copy(model)
    trainer.current_task = 1
    trainer.optimizer = trainer.new_optimizer()
    batch = next(iter(trainer._data_method.batches(trainer, 1, 1)))
    with torch.no_grad():
        p = torch.softmax(reference(batch.inputs).double(), 1)
    correct = parity_answers()[batch.targets]
    mass = (p * correct).sum(1, keepdim=True)
    q = p * correct / mass
    hand = float((-(q * torch.where(correct, q.log(), torch.zeros_like(q))).sum(1) - mass.squeeze(1).log()).mean())
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    parts = trainer.step(batch, 1, 1)
    assert parts["data_loss"] == pytest.approx(hand, rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert all(p.grad is None for p in reference.parameters()) and not reference.training


def test_oracle_and_choice_are_refused_in_one_line_where_they_cannot_apply(mnist_dir, tmp_path):
    from forgetting.preparing import check_loop_on_stream
    from forgetting.streams import build_stream

    with pytest.raises(BadInput, match=r"^--sft-targets oracle: applies to --objective sft only"):
        tiny_parity(mnist_dir, tmp_path, sft_targets="oracle")
    digits = make_config(benchmark="split-digits", method="naive", sft_targets="oracle", results_dir=str(tmp_path))
    stream = build_stream("split-digits", "domain", {"n_tasks": 5, "download": False})
    with pytest.raises(BadInput, match=r"^--sft-targets oracle: no fine-tuning task of benchmark 'split-digits'"):
        check_loop_on_stream(digits, stream)
    with pytest.raises(BadInput, match=r"^--sft-targets oracle: not for causal LMs"):
        make_config(benchmark="uci-sentiment", model="gpt2", lm_task="completion", method="naive",
                    sft_targets="oracle", results_dir=str(tmp_path))
    pg = tiny_parity(mnist_dir, tmp_path, reward="choice")
    parity = build_stream("parity-mnist", "domain", {**pg.stream_options, "data_dir": pg.data_dir})
    parity.objective = "classification"
    with pytest.raises(BadInput, match=r"^--reward choice: needs causal-LM completion tasks"):
        check_loop_on_stream(pg, parity)
    with pytest.raises(BadInput, match=r"^--learn-tasks 6: benchmark 'split-digits' has 5 tasks to learn"):
        check_loop_on_stream(make_config(benchmark="split-digits", method="naive", learn_tasks=6,
                                         results_dir=str(tmp_path)), stream)


def test_a_completion_picks_the_choice_it_is_or_begins_with():
    from forgetting.objectives.causal_lm.sampling import chosen, pick_choice
    from forgetting.rewards import RewardContext, reward

    choices = [" World", " Sports", " Sci/Tech", " Sci"]
    assert pick_choice(" Sports", choices) == 1
    assert pick_choice("  Sports \n", choices) == 1          # whitespace normalised
    assert pick_choice(" Sports fans", choices) == 1         # an answer need not end where the response does
    assert pick_choice(" Sci/Tech news", choices) == 2       # the longest choice it begins with
    assert pick_choice(" Sci fi", choices) == 3
    assert pick_choice(" Sportsman", choices) == -1          # a choice is a whole word
    assert pick_choice(" Spo", choices) == -1 and pick_choice("", choices) == -1
    # token ids: 1 -> "a", 2 -> "b", 3 -> " ", 9 -> end-of-text (left out by the decoding)
    tok = SimpleNamespace(decode=lambda t, skip_special_tokens=True: "".join({1: "a", 2: "b", 3: " "}.get(x, "") for x in t))
    picked = chosen([[[3, 1, 9], [3, 2, 3, 1], [3, 1, 1]]], [[[3, 1, 9], [3, 2, 9]]], [tok])
    assert picked.tolist() == [[0, 1, -1]]
    objective = SimpleNamespace(chosen=lambda answers, batch, stream: picked)
    batch = SimpleNamespace(targets=torch.tensor([1]))
    assert reward("choice")(None, batch, RewardContext(objective, None, 1)).tolist() == [[0.0, 1.0, 0.0]]


def test_base_preview_learn_tasks_finetune_lr_and_weight_change(mnist_dir, tmp_path):
    """--base-preview N: task 0's batches hold all of task 0 and the same N examples of task 1 (own task id, index
    −1) whatever the seed; --learn-tasks cuts the stream to its first tasks; --finetune-lr is task 1's rate;
    weight_change is ‖θ − θ_base‖₂. None of them is in the run id at its default."""
    from forgetting.optim import build_optimizer
    from forgetting.preparing import check_loop_on_stream
    from forgetting.registry import build_methods, build_model
    from forgetting.streams import build_stream
    from forgetting.teacher import frozen_copy
    from forgetting.train import Trainer

    plain = tiny_sft(mnist_dir, tmp_path)
    assert tiny_sft(mnist_dir, tmp_path, base_preview=0, learn_tasks=0,
                       finetune_lr=0.0).run_id == plain.run_id
    cfg = tiny_sft(mnist_dir, tmp_path, base_preview=7, finetune_lr=1e-4)
    stream = build_stream("parity-mnist", "domain", {**cfg.stream_options, "data_dir": cfg.data_dir})
    model = build_model(cfg.model_name, stream, cfg.model_options)
    previews = []
    for seed in (0, 1):
        cfg.loop["seed"] = seed
        trainer = Trainer(cfg, stream, model, build_methods(cfg.method_name, cfg.hparams), torch.device("cpu"))
        batches = list(trainer.preview_batches())
        ids = torch.cat([b.task_ids for b in batches])
        assert int((ids == 0).sum()) == len(stream.tasks[0].train) and int((ids == 1).sum()) == 7
        second = torch.cat([b.inputs[b.task_ids == 1] for b in batches])
        assert (second[:, -1] == 1).all() and all((b.index[b.task_ids == 1] == -1).all() for b in batches)
        previews.append(sorted(map(tuple, second[:, :784].tolist())))
    assert previews[0] == previews[1]
    params = list(model.parameters())
    assert build_optimizer(params, cfg, 0).param_groups[0]["lr"] == cfg.lr
    assert build_optimizer(params, cfg, 1).param_groups[0]["lr"] == 1e-4
    trainer.base_model = frozen_copy(model)
    assert trainer.weight_change() == 0.0
    with torch.no_grad():
        params[0].add_(0.5)
    assert trainer.weight_change() == pytest.approx(0.5 * math.sqrt(params[0].numel()), rel=1e-6)
    check_loop_on_stream(tiny_sft(mnist_dir, tmp_path, learn_tasks=1), stream)
    assert len(stream) == stream.n_learned == 1 and stream.tasks[0].name.startswith("permuted-digit")
