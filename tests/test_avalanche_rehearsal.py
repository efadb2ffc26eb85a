"""The rehearsal strategies through the bridge: the rows are what each strategy predicts with
(iCaRL's nearest mean of exemplars, BiC's corrected logits, GDumb's retrained copy), and the
strategies refuse where they are not defined."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from forgetting.errors import BadInput
from forgetting.integrations.avalanche import AvalancheTrainer, BiasCorrected, NearestMeanOfExemplars
from forgetting.registry import make_config
from forgetting.run import prepare, run_experiment


def accuracy(model: nn.Module, data) -> float:
    x, y = data.gather(torch.arange(len(data)))
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def fitted(tmp_path, method: str, **options):
    cfg = make_config(method=method, scenario="class", epochs=1, progress=False, device="cpu",
                      results_dir=str(tmp_path), **options)
    device, stream, model, methods = prepare(cfg)
    rows = []
    trainer = AvalancheTrainer(cfg, stream, model, methods, device)
    original = trainer.record
    trainer.record = lambda *a: rows.extend(original(*a)) or []
    trainer.fit()
    return trainer, stream, rows


def last_row(rows, task: int, eval_task: int) -> dict:
    return [r for r in rows if r["phase"] == "epoch" and r["trained_task"] == task and r["eval_task"] == eval_task][-1]


def test_icarl_rows_are_its_nearest_mean_classifier(tmp_path):
    trainer, stream, rows = fitted(tmp_path, "avalanche-icarl")
    ncm = trainer.evaluated_model()
    assert isinstance(ncm, NearestMeanOfExemplars) and ncm.net is trainer.strategy.model
    assert len(ncm.net.eval_classifier.class_means_dict) == 10
    # the rows after the last task: Avalanche's own eval-mode model (features -> nearest class mean)
    for k in range(5):
        assert last_row(rows, 4, k)["accuracy"] == pytest.approx(accuracy(trainer.strategy.model, stream.tasks[k].test))
    head_only = accuracy(trainer.model, stream.tasks[0].test)  # the trained head forgets task 0 ...
    assert last_row(rows, 4, 0)["accuracy"] > head_only  # ... the exemplar means keep it


def test_bic_rows_carry_its_bias_correction(tmp_path):
    trainer, stream, rows = fitted(tmp_path, "avalanche-bic", av_bic_stage2_epochs=5)
    corrected = trainer.evaluated_model()
    assert isinstance(corrected, BiasCorrected) and corrected.model is trainer.model
    bias = corrected.bias_layer
    assert bias.clss.tolist() == [8, 9]  # the newest task's classes
    assert (float(bias.alpha), float(bias.beta)) != (1.0, 0.0)  # fitted, not the identity
    for k in range(5):
        assert last_row(rows, 4, k)["accuracy"] == pytest.approx(accuracy(corrected, stream.tasks[k].test))


def test_gdumb_rows_follow_its_retrained_copy(tmp_path):
    trainer, stream, rows = fitted(tmp_path, "avalanche-gdumb")
    assert trainer.model is trainer.strategy.model  # GDumb trains a fresh copy each task: the rows follow it
    for k in range(5):
        assert last_row(rows, 4, k)["accuracy"] == pytest.approx(accuracy(trainer.model, stream.tasks[k].test))
    assert min(last_row(rows, 4, k)["accuracy"] for k in range(5)) > 0.3  # balanced over every class seen


@pytest.mark.parametrize("method", ["avalanche-icarl", "avalanche-bic"])
def test_class_incremental_strategies_refuse_other_scenarios(method, tmp_path):
    cfg = make_config(method=method, scenario="domain", progress=False, device="cpu", results_dir=str(tmp_path))
    with pytest.raises(BadInput, match="defined for the class scenario only, not 'domain'"):
        prepare(cfg)  # the strategy's check_stream, as every method's, before the trainer or any file


def test_icarl_refuses_a_model_without_features_and_head(tmp_path):
    cfg = make_config(method="avalanche-icarl", scenario="class", progress=False, device="cpu")
    device, stream, _, methods = prepare(cfg)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(BadInput, match="iCaRL needs a model split into a feature extractor and a classifier"):
        AvalancheTrainer(cfg, stream, plain, methods, device)


def test_avalanche_refuses_augmented_streams(tmp_path):
    from cifar_files import write_cifar10

    write_cifar10(tmp_path / "data")
    cfg = make_config(benchmark="split-cifar10", method="avalanche-der", augment=True, data_dir=str(tmp_path / "data"),
                      progress=False, device="cpu", results_dir=str(tmp_path / "r"), trust_data=True)
    with pytest.raises(BadInput, match="--augment"):
        run_experiment(cfg)
    assert not (tmp_path / "r").exists()


def test_cli_icarl_in_task_scenario_is_one_line(cli, tmp_path):
    proc = cli("forgetting.run", "--method", "avalanche-icarl", "--scenario", "task", "--results-dir", str(tmp_path / "r"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "class scenario only" in proc.stderr and not (tmp_path / "r").exists()
