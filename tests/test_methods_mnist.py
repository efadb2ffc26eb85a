"""Behaviour on real data: split MNIST, task- and domain-incremental, three seeds per method.

Each of kl, ewc, si and replay must end with less average forgetting (max-based, Chaudhry et
al. 2018) than plain fine-tuning, and joint training with the least. A small budget: an MLP
784-100-100, two epochs per task at Adam 3e-3 in batches of 128 (enough drift for naive fine-tuning
to forget in the task-incremental scenario too; batch 128 takes half the time of 32 for the same
ordering: task forgetting naive 5.1, kl 4.1, ewc 0.2, si 0.2, replay 0.7, joint 0.1 points; domain
naive 49, kl 32, ewc 2.5, si 28, replay 9.7, joint 0.7), every method at its documented default.
"""

from __future__ import annotations

import numpy as np
import pytest

from forgetting.config import RunConfig
from forgetting.registry import make_config
from forgetting.metrics import run_summary
from forgetting import registry
from forgetting.options import check_all
from forgetting.run import run_experiment

METHODS = ["naive", "kl", "ewc", "si", "replay", "joint"]
HOLD_BACK = ["kl", "ewc", "si", "replay"]
SEEDS = [0, 1, 2]


def summarise(scenario: str, mnist_dir, results_dir) -> dict[str, dict[str, float]]:
    out = {}
    for method in METHODS:
        runs = []
        for seed in SEEDS:
            config = make_config(
                benchmark="split-mnist", scenario=scenario, method=method,
                hparams=check_all(registry.method_options(method), {}),
                model_options=check_all(list(registry.model("mlp").options), {"hidden": [100, 100]}),
                
                epochs=2, batch_size=128, lr=3e-3, seed=seed, device="cpu",
                data_dir=str(mnist_dir), results_dir=str(results_dir), progress=False,
            )
            _, rows, status = run_experiment(config)
            assert status == "complete"
            runs.append(run_summary(rows))
        out[method] = {k: float(np.mean([r[k] for r in runs])) for k in ("forgetting_max", "average_accuracy")}
        assert all(r["tasks_trained"] == 5 for r in runs)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["task", "domain"])
def test_methods_forget_less_than_naive_and_joint_least(scenario, mnist_dir, tmp_path):
    s = summarise(scenario, mnist_dir, tmp_path)
    forgetting = {m: v["forgetting_max"] for m, v in s.items()}
    accuracy = {m: v["average_accuracy"] for m, v in s.items()}
    print(scenario, {m: f"forgetting {100 * forgetting[m]:.1f}, accuracy {100 * accuracy[m]:.1f}" for m in METHODS})
    for m in HOLD_BACK:
        assert forgetting[m] < forgetting["naive"], (m, forgetting)
    # joint: the least forgetting; in task-incremental EWC and SI also reach about zero, so ties
    # within one test example per task (1/400 of the ~400 test images of a task) count as least
    resolution = 1 / 400
    assert forgetting["joint"] <= min(forgetting[m] for m in METHODS if m != "joint") + resolution, forgetting
    assert forgetting["joint"] < forgetting["naive"]
    # and the upper bound on accuracy: the best average accuracy of all
    assert accuracy["joint"] == max(accuracy.values()), accuracy
