"""``--objective pg`` through the loop: options, refusals, answer sets, rewards, the pg step, bitwise resumption."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import cut_after_task
from forgetting.errors import BadInput
from forgetting.objectives.classification import Classification
from forgetting.registry import make_config
from forgetting.rewards import RewardContext, register_reward, reward
from forgetting.streams.base import Batch, Task, TaskStream, TensorData, layout_for
from forgetting.streams.parity import parity_answers


def tiny_parity(mnist_dir, tmp_path, **options):
    values = dict(benchmark="parity-mnist", method="naive", objective="pg", pg_samples=4, epochs=1,
                  batch_size=256, hidden=[16], dropout=0.0, old_train=300, base_parity=50, eval_subset=200,
                  data_dir=str(mnist_dir), results_dir=str(tmp_path / "r"), progress=False, device="cpu")
    values.update(options)
    return make_config(**values)


def test_sft_keeps_every_run_id_and_pg_options_need_pg():
    plain = make_config(method="kl", epochs=1)
    assert make_config(method="kl", epochs=1, objective="sft").run_id == plain.run_id
    assert not {"objective", "pg_samples", "reward"} & set(plain.loop)
    pg = make_config(method="kl", epochs=1, objective="pg")
    assert pg.run_id != plain.run_id and pg.loop["pg_samples"] == 8 and pg.objective == "pg"
    assert make_config(method="kl", epochs=1, objective="pg", pg_samples=4).run_id != pg.run_id
    with pytest.raises(BadInput, match=r"^--pg-samples: applies to --objective pg only"):
        make_config(pg_samples=4)


@pytest.mark.parametrize("values, message", [
    ({"objective": "pg", "pg_samples": 1}, r"--pg-samples.*1"),
    ({"objective": "pg", "method": "rdrop"}, r"^--objective pg with --method rdrop: .*allowed"),
    ({"objective": "pg", "reward": "no_such_reward"}, r"^--reward no_such_reward: unknown reward, allowed: correct"),
    ({"objective": "ppo"}, r"--objective.*ppo.*sft, pg"),
])
def test_bad_pg_values_are_one_line(values, message):
    with pytest.raises(BadInput, match=message) as e:
        make_config(**{"method": "naive", **values})
    assert "\n" not in str(e.value)


def test_pg_refused_on_language_modelling_tasks_in_one_line(tmp_path):
    text = tmp_path / "t.csv"
    text.write_text("text,task\n" + "".join(f"hello {i},{i % 2}\n" for i in range(8)))
    with pytest.raises(BadInput) as e:
        make_config(benchmark="text-file", text_file=str(text), model="gpt2", lm_task="lm", method="naive",
                    objective="pg", results_dir=str(tmp_path / "r"))
    line = str(e.value)
    assert "\n" not in line and line.startswith("--objective pg: language-modelling tasks") and "completion" in line
    with pytest.raises(BadInput, match=r"^--pg-max-new-tokens: applies to causal LMs only"):
        make_config(method="naive", objective="pg", pg_max_new_tokens=4)


def test_a_causal_lm_samples_scores_and_rewards_its_completions():
    """Prompts read back from a completion batch; seeded sampling repeats; exact match by normalised text."""
    from types import SimpleNamespace

    from forgetting.models.causal import CausalLM as Wrapper
    from forgetting.objectives.causal_lm import sampling
    from transformers import GPT2Config, GPT2LMHeadModel

    ids = torch.tensor([[9, 5, 6, 7, 8, 0], [9, 4, 7, 8, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 7, 8, -100], [-100, -100, 7, 8, -100, -100]])
    inputs = {"input_ids": ids, "labels": labels, "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0],
                                                                                 [1, 1, 1, 1, 0, 0]])}
    prompts, responses = sampling.split_batch(inputs)
    assert prompts == [[9, 5, 6], [9, 4]] and responses == [[7, 8], [7, 8]]
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=12, n_positions=16, n_embd=8, n_layer=1, n_head=2)).eval()
    model = Wrapper(lm, None)
    draw = lambda seed: sampling.generate(model, prompts, 3, seed, temperature=1.0, max_new_tokens=4, pad_id=0,
                                          eos_id=11, device="cpu")
    state = torch.get_rng_state()
    first = draw(7)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is left as it was
    assert draw(7) == first and len(first) == 2 and all(len(g) == 3 for g in first)
    assert all(1 <= len(c) <= 4 and (11 not in c[:-1]) for g in first for c in g)
    long = sampling.generate(model, prompts, 2, 7, temperature=1.0, max_new_tokens=40, pad_id=0, eos_id=11,
                             device="cpu")  # capped by the context of 16 positions after the 3-token prompt
    assert all(len(c) <= 13 for g in long for c in g)
    log_probs, mask = sampling.completion_log_probs(model, prompts, first, temperature=1.0, pad_id=0, device="cpu")
    assert mask.sum(-1).tolist() == [[len(c) for c in g] for g in first]
    with torch.no_grad():  # the first completion's first token, scored by hand
        logits = model({"input_ids": torch.tensor([prompts[0]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)})
    hand = torch.log_softmax(logits[0, -1].float(), -1)[first[0][0][0]]
    assert float(log_probs[0, 0, 2].detach()) == pytest.approx(float(hand), abs=1e-5)
    tok = SimpleNamespace(decode=lambda t, skip_special_tokens=True: " ".join(f"w{x}" for x in t if x != 11))
    right = sampling.exact_matches([[[7, 8, 11], [7]], [[7, 8], [8, 7]]], [[7, 8, 11], [7, 8, 11]], [tok, tok])
    assert right.tolist() == [[True, False], [True, False]]


def test_pg_on_a_causal_lm_composes_with_kl_and_resumes_bitwise(tmp_path, monkeypatch):
    """Tiny GPT-2 on three prompt/response tasks, pg (G = 2, exact-match reward) + kl: killed after task 1 and
    resumed, the rows equal an uninterrupted run's."""
    from conftest import resumed_equals_whole
    from test_lm import TINY, write_pairs

    write_pairs(tmp_path / "pairs.csv", n=6)
    cfg = make_config(benchmark="text-file", model="gpt2", method="kl", epochs=1, batch_size=6, lr=3e-3, device="cpu",
                      progress=False, model_options=TINY, results_dir=str(tmp_path / "cut"), objective="pg",
                      pg_samples=2, pg_max_new_tokens=3,
                      stream_options={"text_file": str(tmp_path / "pairs.csv"), "prompt_column": "prompt",
                                      "response_column": "response", "max_seq_len": 40})
    assert cfg.loop["pg_max_new_tokens"] == 3
    run_dir = resumed_equals_whole(cfg, tmp_path, monkeypatch)
    from forgetting.results import read_run

    rows = read_run(run_dir)[1]
    assert set(rows.trained_task) == {-1, 0, 1, 2} and rows[rows.trained_task == 2].kl_base.notna().all()


def test_cli_refuses_one_sample_per_group_with_exit_2(cli, tmp_path):
    out = cli("forgetting.run", "--method", "naive", "--objective", "pg", "--pg-samples", "1",
              "--results-dir", str(tmp_path / "r"))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--pg-samples" in lines[0] and "2" in lines[0]
    assert not (tmp_path / "r").exists()


def test_answer_sets_decide_correct_answers_and_accuracy():
    layout = layout_for("domain", 1, [10])
    answers = parity_answers()
    x = torch.zeros(3, 1)
    task = Task(0, "parity", TensorData(x, torch.tensor([0, 1, 4])), TensorData(x, torch.tensor([0, 1, 4])),
                list(range(10)), list(range(10)), answers=answers)
    stream = TaskStream("toy", "domain", [task], layout, "tensor", (1,))
    batch = Batch(x, torch.tensor([0, 1, 4]), torch.zeros(3, dtype=torch.long), torch.arange(3))
    sampled = torch.tensor([[2, 3], [9, 0], [4, 8]])  # targets 0 (even), 1 (odd), 4 (even)
    objective = Classification(layout)
    expected = torch.tensor([[True, False], [True, False], [True, True]])
    assert torch.equal(objective.correct(sampled, batch, stream), expected)
    assert torch.equal(reward("correct")(sampled, batch, RewardContext(objective, stream, 0)), expected.float())
    from forgetting.evaluate import Evaluator

    logits = torch.full((3, 10), -5.0)
    logits[0, 6], logits[1, 2], logits[2, 0] = 5.0, 5.0, 5.0  # even for 0: right; even for 1: wrong; 0 for 4: right
    assert Evaluator(stream, 8, "cpu").accuracy(logits, torch.tensor([0, 1, 4]), 0, None) == pytest.approx(2 / 3)


def test_registered_reward_by_name_and_by_path():
    @register_reward("always_one_test")
    def always_one(answers, batch, context):
        return torch.ones_like(answers, dtype=torch.float32)

    assert reward("always_one_test") is always_one
    assert reward("forgetting.rewards:correct") is reward("correct")
    assert make_config(method="naive", objective="pg", reward="always_one_test").loop["reward"] == "always_one_test"


def test_pg_fine_tunes_parity_and_resumes_bitwise(mnist_dir, tmp_path, monkeypatch):
    """A pg run on ParityMNIST: the base learns from targets, the new task from its own samples; killed after the
    base task and resumed, it ends with the rows of an uninterrupted run."""
    from forgetting.results import read_run
    from forgetting.run import run_experiment

    cfg = tiny_parity(mnist_dir, tmp_path)
    run_dir = cut_after_task(cfg, 0, monkeypatch)
    resumed_dir, _, status = run_experiment(cfg, resume=True)
    assert status == "complete" and resumed_dir == run_dir
    cfg.results_dir = str(tmp_path / "whole")
    whole_dir, _, _ = run_experiment(cfg)
    resumed, whole = read_run(resumed_dir)[1], read_run(whole_dir)[1]
    pd.testing.assert_frame_equal(resumed.drop(columns="wall_time"), whole.drop(columns="wall_time"), check_exact=True)
    last = whole[whole.trained_task == 1]
    assert set(last.eval_task) == {0, 1} and last.kl_base.notna().all()


def test_pg_step_logs_rewards_and_all_right_groups_move_nothing(mnist_dir, tmp_path):
    """The step's parts carry reward_mean, reward_std and pg_loss; a reward that is 1 for every answer gives zero
    advantages, so the model after the step is bitwise the model before it."""
    from forgetting.registry import build_methods, build_model
    from forgetting.streams import build_stream
    from forgetting.train import Trainer

    register_reward("all_right_test")(lambda answers, batch, context: torch.ones(answers.shape))
    cfg = tiny_parity(mnist_dir, tmp_path, reward="all_right_test", optimizer="sgd")
    stream = build_stream("parity-mnist", "domain", {**cfg.stream_options, "data_dir": cfg.data_dir})
    model = build_model(cfg.model_name, stream, cfg.model_options)
    trainer = Trainer(cfg, stream, model, build_methods(cfg.method_name, cfg.hparams), torch.device("cpu"))
    trainer.current_task = 1
    trainer.optimizer = trainer.new_optimizer()
    batch = next(iter(trainer._data_method.batches(trainer, 1, 1)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parts = trainer.step(batch, 1, 1)
    assert parts["reward_mean"] == 1.0 and parts["reward_std"] == 0.0 and parts["pg_loss"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    cfg2 = tiny_parity(mnist_dir, tmp_path, optimizer="sgd")
    trainer2 = Trainer(cfg2, stream, model, build_methods(cfg2.method_name, cfg2.hparams), torch.device("cpu"))
    trainer2.current_task = 1
    trainer2.optimizer = trainer2.new_optimizer()
    parts = trainer2.step(batch, 1, 1)
    assert 0.0 < parts["reward_mean"] < 1.0 and parts["reward_std"] > 0.0
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_answer_sets_are_read_at_the_output_indices_when_the_evaluated_outputs_are_a_slice():
    """task/class scenarios evaluate on some outputs (``outs``): the argmax and the target are positions among them,
    taken back to output indices before the answer table (not shift-invariant here) is read."""
    from forgetting.evaluate import Evaluator

    table = torch.rand(10, 10, generator=torch.Generator().manual_seed(0)) < 0.5
    x = torch.zeros(4, 1)
    task = Task(0, "t", TensorData(x, torch.zeros(4, dtype=torch.long)), TensorData(x, torch.zeros(4, dtype=torch.long)),
                list(range(10)), list(range(10)), answers=table)
    stream = TaskStream("toy", "domain", [task], layout_for("domain", 1, [10]), "tensor", (1,))
    outs = [3, 5, 6, 8]
    logits = torch.full((4, 4), -5.0)
    logits[0, 2], logits[1, 0], logits[2, 3], logits[3, 1] = 5.0, 5.0, 5.0, 5.0  # positions 2, 0, 3, 1
    targets = torch.tensor([0, 1, 3, 2])
    by_hand = sum(bool(table[outs[t], outs[p]]) for t, p in zip([0, 1, 3, 2], [2, 0, 3, 1])) / 4
    at_positions = sum(bool(table[t, p]) for t, p in zip([0, 1, 3, 2], [2, 0, 3, 1])) / 4
    assert by_hand != at_positions
    assert Evaluator(stream, 8, "cpu").accuracy(logits, targets, 0, outs) == pytest.approx(by_hand)
    task.answers = None  # without a table: the argmax is the target
    assert Evaluator(stream, 8, "cpu").accuracy(logits, targets, 0, outs) == pytest.approx(1 / 4)


def test_an_sft_and_a_pg_run_differ_as_experiments_only_by_what_they_set():
    """Reports group seeds and label experiments by the configs' differences: an sft run records no pg option and pg
    on a classifier no token budget, so the defaults stand in for them (a label 'pg_samples=None' would say nothing)."""
    from pathlib import Path

    import pandas as pd

    from forgetting.report_runs import Run

    def experiment(**options):
        return Run(Path("x"), make_config(benchmark="parity-mnist", method="naive", **options).to_dict(), {},
                   pd.DataFrame()).experiment()

    pg, sft = experiment(objective="pg", pg_samples=4), experiment()
    assert {k: (pg.get(k), sft.get(k)) for k in pg.keys() | sft.keys() if pg.get(k) != sft.get(k)} == {
        "loop.objective": ("pg", "sft"), "loop.pg_samples": (4, 8)}
    assert experiment(stop_at_accuracy=0.5)["loop.stop_at_accuracy"] == 0.5 and sft["loop.stop_at_accuracy"] == 0.0


def test_reward_paths_with_dots_or_a_colon_and_the_refusals_name_the_allowed_ones():
    """A dotted path's last dot splits module from function (``a.b.fn``); a name that looks like a path but does not
    load says so (upper-case module names are paths too); any other name is unknown. Both list the rewards."""
    from forgetting import rewards
    from forgetting.errors import BadInput

    assert rewards.reward("forgetting.rewards.correct") is rewards.correct
    assert rewards.reward("forgetting.rewards:choice") is rewards.choice
    listed = r"allowed: correct, choice(, [\w.:]+)*"
    with pytest.raises(BadInput, match=rf"^--reward NoSuchModule:fn: does not load \(No module named 'NoSuchModule'\); "
                                       rf"{listed} or module:function$"):
        rewards.reward("NoSuchModule:fn")
    with pytest.raises(BadInput, match=rf"^--reward brevity: unknown reward, {listed} or a module:function path$"):
        rewards.reward("brevity")


def test_choice_rewards_the_examples_own_choice_and_needs_choices_on_every_learned_task():
    """``choice``: 1 where the objective's pick (handed the answers, batch and stream as given) is the example's
    target; its stream check names each learned task after the first whose training data has no choices."""
    from types import SimpleNamespace

    from forgetting import rewards
    from forgetting.errors import BadInput

    answers, batch, stream = torch.zeros(2, 3), SimpleNamespace(targets=torch.tensor([1, 0])), object()
    seen = []

    def chosen(*args):
        seen.append(args)
        return torch.tensor([[1, 0, -1], [0, 0, 2]])

    context = rewards.RewardContext(SimpleNamespace(chosen=chosen), stream, 1)
    assert rewards.choice(answers, batch, context).tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    assert len(seen) == 1 and all(a is b for a, b in zip(seen[0], (answers, batch, stream)))
    task = lambda name, **train: SimpleNamespace(name=name, train=SimpleNamespace(**train))  # noqa: E731
    tasks = [task("zero"), task("a", choices=[" x"]), task("b"), task("c", choices=None), task("d")]
    with pytest.raises(BadInput, match=r"^--reward choice: needs causal-LM completion tasks with a fixed set of answers "
                                       r"\(choices\); b, c has none; allowed: --reward correct$"):
        rewards.choice.check_stream(SimpleNamespace(tasks=tasks, n_learned=4))
    rewards.choice.check_stream(SimpleNamespace(tasks=tasks, n_learned=2))  # task 0 and a: nothing to refuse


def test_pg_task_loss_wires_the_options_the_task_and_the_old_log_probs_through(monkeypatch):
    """One step of ``pg_task_loss`` on a stand-in objective: the sampler gets the run's options, the task and the
    loop's generator (old log-probabilities asked for only with --pg-clip); the loss is the clipped, std-scaled,
    masked pg_loss of those (each part tested by hand in test_policy_gradient.py); reward_std is the groups' mean
    population std; a reward of the wrong shape is refused naming both shapes."""
    import math
    from types import SimpleNamespace

    from forgetting import rewards
    from forgetting.onpolicy import pg_task_loss
    from forgetting.policy_gradient import group_advantages, pg_loss

    lp = torch.tensor([[[-0.5, -1.0], [-2.0, -0.1], [-1.5, -0.3]], [[-0.2, -0.9], [-1.1, -2.5], [-0.4, -0.6]]],
                      dtype=torch.float64)
    old = lp - torch.tensor([0.5, -0.4], dtype=torch.float64)  # ratios e^0.5 and e^-0.4: both clipped at 0.2
    mask = torch.tensor([[[True, True], [True, False], [True, True]], [[True, False], [True, True], [False, True]]])
    r = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    calls = []

    class Objective:
        def sample_answers(self, model, batch, task, groups, generator, *, temperature, max_new_tokens, log_probs):
            calls.append(("sample", task, groups, generator, temperature, max_new_tokens, log_probs, model.training))
            return torch.zeros(2, 3, dtype=torch.long), (old if log_probs else None)

        def answer_log_probs(self, model, batch, task, answers, *, temperature):
            calls.append(("score", task, temperature, model.training))
            return "logits", lp, mask

    def reward_fn(answers, batch, context):
        calls.append(("reward", context.task))
        return r if context.stream == "right" else r[:, :2]

    monkeypatch.setitem(rewards.REWARDS, "r_test", reward_fn)
    model = torch.nn.Linear(1, 1)
    config = SimpleNamespace(pg_samples=3, pg_temperature=0.7, pg_max_new_tokens=5, pg_clip=0.2, reward="r_test",
                             pg_scale_std=True)
    trainer = SimpleNamespace(config=config, objective=Objective(), model=model, current_task=1, generator="gen",
                              stream="right")
    logits, loss, logs = pg_task_loss(trainer, "batch")
    assert calls == [("sample", 1, 3, "gen", 0.7, 5, True, False), ("score", 1, 0.7, True), ("reward", 1)]
    expected = pg_loss(lp, group_advantages(r, scale_by_std=True), mask, old_log_probs=old, clip=0.2)
    assert logits == "logits" and torch.allclose(loss, expected, rtol=1e-12, atol=0)
    assert not torch.allclose(expected, pg_loss(lp, group_advantages(r), mask, old_log_probs=old, clip=0.2))
    assert float(logs["reward_mean"]) == pytest.approx(0.5) and float(logs["pg_loss"]) == float(loss)
    assert float(logs["reward_std"]) == pytest.approx(math.sqrt(2 / 9), rel=1e-6)
    config.pg_clip, config.pg_scale_std = 0.0, False
    calls.clear()
    _, loss, _ = pg_task_loss(trainer, "batch")
    assert calls[0][6] is False and torch.allclose(loss, pg_loss(lp, group_advantages(r), mask), rtol=1e-12, atol=0)
    trainer.stream = "wrong"
    with pytest.raises(ValueError, match=r"^reward 'r_test' gave shape \(2, 2\), expected \(2, 3\)$"):
        pg_task_loss(trainer, "batch")
