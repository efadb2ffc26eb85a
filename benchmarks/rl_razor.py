"""RL's Razor on ParityMNIST (Shenfeld, Pari & Agrawal 2025, arXiv 2509.04259), on the embedded MNIST test images.

    python benchmarks/rl_razor.py                       # the whole sweep, table + figures into results/rl_razor/
    python benchmarks/rl_razor.py --seeds 0 --quick     # one seed, fewer settings: a minute
    python benchmarks/rl_razor.py --from-sweep results/rl_razor_suite   # the same table and figures from a sweep
                                                        # of benchmarks/rl_razor.toml (the harness's runs, which
                                                        # stop at 95 % with the loop's --stop-at-accuracy)

One MLP (786-256-256-10) with a two-way task indicator appended to the pixels, one shared head of 10 outputs:
- old task (indicator 0): digit identity on permuted-MNIST images (a fixed pixel permutation). FashionMNIST, the
  paper's old task, is not among the embedded data; a permuted digit is, like a garment, an input the new task never
  shows, with its own 10 classes on the same outputs, and its answers are no solution of the new task;
- new task (indicator 1): the parity of an (unpermuted) digit, where every digit of the right parity is a correct
  answer (10 outputs kept).
The base is trained jointly on the old task and a little parity data (labels: one random correct digit per image), so
it already puts some mass on right answers. Each fine-tuning run then trains on the new task alone until its
new-task test accuracy (argmax in the correct set) reaches ``--target`` (matched accuracy) or ``--max-steps``:
- ``pg``: G answers per image sampled from the policy, reward 1 when right, advantage = reward − group mean;
- ``sft-fixed``: cross-entropy on even→0, odd→1; ``sft-random``: on one random correct digit per image;
- ``sft-oracle``: cross-entropy on the base's distribution restricted to the correct set and renormalised (the
  correct answer distribution of least KL to the base);
- ``sft+kl`` at several λ and ``pg+kl``: the forward KL(π0 ‖ π) to the frozen base on the same inputs.
Forgetting = old-task test accuracy of the base − that of the fine-tuned model. Per run: KL(π0 ‖ π) on the new and
on the old task's test inputs, ‖θ − θ0‖₂; fits of forgetting on each, linear and quadratic, with R².
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forgetting.penalty import kl_penalty  # noqa: E402
from forgetting.oracle import oracle_targets, soft_cross_entropy  # noqa: E402
from forgetting.policy_gradient import group_advantages, pg_loss, sample_answers  # noqa: E402
from forgetting.report_summary import least_squares  # noqa: E402
from forgetting.streams import default_data_dir  # noqa: E402
from forgetting.streams.mnist import load_arrays  # noqa: E402

EVEN = torch.tensor([c % 2 == 0 for c in range(10)])


def correct_sets(y: torch.Tensor) -> torch.Tensor:
    """[n, 10] bool: the digits of each image's parity."""
    return EVEN.unsqueeze(0) == (y % 2 == 0).unsqueeze(1)


def with_indicator(x: np.ndarray, task: int) -> torch.Tensor:
    flat = torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float32)
    ind = torch.zeros(len(x), 2)
    ind[:, task] = 1.0
    return torch.cat([flat, ind], 1)


def make_data(data_dir, n_old: int, n_parity_base: int, seed: int = 0, base_labels: str = "digit"):
    """The four parts (old/new x train/test) and the base's small parity set; the new task's training set is
    the parity images the base did not see."""
    x_tr, x_te, y_tr, y_te, _ = load_arrays(str(data_dir))
    rng = np.random.default_rng(1000 + seed)
    perm = np.random.default_rng(0).permutation(784)
    order = rng.permutation(len(x_tr))
    old_idx, par_idx = order[:n_old], order[n_old:]
    d = {
        "old_train": (with_indicator(x_tr[old_idx].reshape(-1, 784)[:, perm], 0), torch.as_tensor(y_tr[old_idx])),
        "old_test": (with_indicator(x_te.reshape(-1, 784)[:, perm], 0), torch.as_tensor(y_te)),
        "new_train": (with_indicator(x_tr[par_idx], 1), torch.as_tensor(y_tr[par_idx])),
        "new_test": (with_indicator(x_te, 1), torch.as_tensor(y_te)),
    }
    xb, yb = d["new_train"][0][:n_parity_base], d["new_train"][1][:n_parity_base]
    if base_labels == "digit":  # the base names the digit: a correct answer, its preferred one within the set
        labels = yb
    else:  # "random": one random correct digit per image, no preference within the set
        g = torch.Generator().manual_seed(2000 + seed)
        labels = torch.multinomial(correct_sets(yb).float(), 1, generator=g).squeeze(1)
    d["base_parity"] = (xb, labels)
    d["new_train"] = (d["new_train"][0][n_parity_base:], d["new_train"][1][n_parity_base:])
    return d


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(786, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def train_base(d, seed: int, epochs: int) -> nn.Module:
    torch.manual_seed(seed)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.cat([d["old_train"][0], d["base_parity"][0]])
    y = torch.cat([d["old_train"][1], d["base_parity"][1]])
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(128):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def measure(model, base, d) -> dict:
    xo, yo = d["old_test"]
    xn, yn = d["new_test"]
    lo, ln = model(xo), model(xn)
    bo, bn = base(xo), base(xn)
    dtheta = torch.cat([(p - q).flatten() for p, q in zip(model.parameters(), base.parameters())])
    return {
        "old_acc": float((lo.argmax(1) == yo).float().mean()),
        "new_acc": float(correct_sets(yn).gather(1, ln.argmax(1, keepdim=True)).float().mean()),
        "new_mass": float((ln.softmax(1) * correct_sets(yn)).sum(1).mean()),
        "kl_new": float(kl_penalty(ln, bn)),  # KL(π0 ‖ π) on the new task's inputs
        "kl_old": float(kl_penalty(lo, bo)),
        "dtheta": float(dtheta.norm()),
    }


def finetune(base, d, method: str, lam: float, lr: float, seed: int, args) -> dict:
    model = mlp()
    model.load_state_dict(base.state_dict())
    opt = (torch.optim.SGD(model.parameters(), lr) if args.optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr))
    x, y = d["new_train"]
    correct = correct_sets(y)
    with torch.no_grad():
        base_logits = base(x)
        oracle = oracle_targets(base_logits, correct)  # the harness's --sft-targets oracle
    g = torch.Generator().manual_seed(seed)
    random_label = torch.multinomial(correct.float(), 1, generator=g).squeeze(1)
    fixed_label = (y % 2 != 0).long()  # even -> 0, odd -> 1
    step, t0 = 0, time.perf_counter()
    m = measure(model, base, d)
    trajectory = [{**m, "step": 0}]
    while m["new_acc"] < args.target and step < args.max_steps:
        for idx in torch.randperm(len(x), generator=g).split(args.batch_size):
            model.train()
            logits = model(x[idx])
            terms = {}
            if method.startswith("pg"):
                answers = sample_answers(logits, args.pg_samples, g)
                rewards = correct[idx].gather(1, answers).double()
                adv = group_advantages(rewards)
                logp = logits.log_softmax(1).gather(1, answers)
                loss = pg_loss(logp, adv)
                terms["reward"] = float(rewards.mean())
            elif method == "expected-reward":  # the G -> infinity limit of pg: −E_π[reward], exact
                loss = -(logits.softmax(1) * correct[idx]).sum(1).mean()
            elif method.startswith("sft-fixed"):
                loss = F.cross_entropy(logits, fixed_label[idx])
            elif method.startswith("sft-random"):
                loss = F.cross_entropy(logits, random_label[idx])
            elif method.startswith("sft-oracle"):
                loss = soft_cross_entropy(logits, oracle[idx])
            else:
                raise ValueError(method)
            if lam > 0:
                loss = loss + lam * kl_penalty(logits, base_logits[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % args.eval_every == 0:
                m = measure(model, base, d)
                trajectory.append({**m, "step": step})
                if m["new_acc"] >= args.target or step >= args.max_steps:
                    break
    m = measure(model, base, d)
    return {**m, "steps": step, "seconds": time.perf_counter() - t0, "trajectory": trajectory}


def fits(x: np.ndarray, y: np.ndarray) -> dict:
    """R² (and coefficients, highest power first) of the least-squares line and parabola of y on x: the harness's
    fit (``report_summary.least_squares``, the one the report's figure draws)."""
    f = least_squares(np.asarray(x, float), np.asarray(y, float)) or {}
    out = {"r2_deg1": f.get("r2", float("nan")), "r2_deg2": f.get("quad", {}).get("r2", float("nan"))}
    if f:
        out["coef_deg1"] = [f["slope"], f["intercept"]]
    if "quad" in f:
        out["coef_deg2"] = [f["quad"]["c2"], f["quad"]["c1"], f["quad"]["c0"]]
    return out


def setting_of(cfg: dict) -> tuple[str, float]:
    """(the study's name of a sweep run, its λ) from its flat config (``report_runs.Run.config``)."""
    lam = float((cfg.get("hparams") or {}).get("kl_lambda", 0.0)) if cfg.get("method") == "kl" else 0.0
    if cfg.get("objective") == "pg":
        name = "pg"
    elif cfg.get("sft_targets") == "oracle":
        name = "sft-oracle"
    else:
        name = f"sft-{(cfg.get('stream_options') or {}).get('parity_targets', 'fixed')}"
    return (f"{name}+kl {lam:g}" if lam > 0 else name), lam


def from_sweep(results: Path, out: Path) -> float:
    """``runs.csv`` and ``trajectories.csv`` of this script's layout from a sweep of benchmarks/rl_razor.toml (its
    complete runs): forgetting = the old task's accuracy after the base task minus after the fine-tuning task, which
    ends where ``--stop-at-accuracy`` stopped it (``stopped``: 1 when it reached the target, 0 when it trained all its
    epochs). Returns the runs' stop target (the lowest; 0 when a run trained fixed epochs)."""
    import pandas as pd

    from forgetting.metrics import accuracy_matrix, final_epoch_rows, run_summary, task_boundaries
    from forgetting.report_runs import load_runs

    rows, trajectories, targets = [], [], []
    for run in load_runs([results]):
        if not run.complete or run.benchmark != "parity-mnist":
            continue
        setting, lam = setting_of(run.config)
        targets.append(float(run.config.get("stop_at_accuracy") or 0.0))
        stop = (run.manifest.get("stopped_at") or {}).get("1", {})
        A, s = accuracy_matrix(run.rows), run_summary(run.rows)
        base_old = float(A[0, 0])
        rows.append({"setting": setting, "method": setting.split("+")[0], "lam": lam,
                     "lr": run.config.get("finetune_lr") or run.config.get("lr"),  # the fine-tuning task's rate
                     "seed": run.seed, "new_acc": float(A[1, 1]), "old_acc": float(A[1, 0]),
                     "forgetting": base_old - float(A[1, 0]), "kl_new": s["kl_new_task"], "kl_old": s["kl_old_tasks"],
                     "dtheta": s["weight_change"], "steps": int(run.rows["global_step"].max() - task_boundaries(run.rows).iloc[0]),
                     "stopped": int(bool(stop.get("reached"))) if stop else float("nan"), "run_id": run.run_id})
        ev = run.rows[(run.rows["phase"] != "init") & (run.rows["trained_task"] >= 1)]
        start = final_epoch_rows(run.rows)
        start = start[start["trained_task"] == 0]
        for _, point in pd.concat([start, ev]).groupby("global_step"):
            # one evaluation per step (an --eval-every step that ends an epoch is evaluated twice, alike)
            acc = point.drop_duplicates("eval_task", keep="last").set_index("eval_task")["accuracy"]
            trajectories.append({"setting": setting, "seed": run.seed, "step": int(point["global_step"].iloc[0]),
                                 "new_acc": float(acc[1]), "old_acc": float(acc[0]),
                                 "forgetting": base_old - float(acc[0])})
    if not rows:
        raise SystemExit(f"{results}: no complete parity-mnist run")
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    pd.DataFrame(trajectories).to_csv(out / "trajectories.csv", index=False)
    return min(targets)


LRS = (3e-4, 1e-3)
SETTINGS = [  # (label, method, λ of the forward KL to the base on the same inputs)
    ("pg", "pg", 0.0),
    ("sft-fixed", "sft-fixed", 0.0),
    ("sft-random", "sft-random", 0.0),
    ("sft-oracle", "sft-oracle", 0.0),
    ("sft+kl 0.1", "sft-fixed", 0.1),
    ("sft+kl 0.3", "sft-fixed", 0.3),
    ("sft+kl 0.6", "sft-fixed", 0.6),
    ("pg+kl 0.1", "pg", 0.1),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target", type=float, default=0.95, help="new-task accuracy a run trains to")
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pg-samples", type=int, default=8)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--n-old", type=int, default=4000)
    ap.add_argument("--n-parity-base", type=int, default=200, help="parity images in the base's training set")
    ap.add_argument("--base-labels", choices=("digit", "random"), default="digit",
                    help="the base's parity labels: the digit itself, or one random correct digit per image")
    ap.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    ap.add_argument("--base-epochs", type=int, default=10)
    ap.add_argument("--data-dir", default=default_data_dir(), help="holds mnist/ (default: ../shared/data)")
    ap.add_argument("--quick", action="store_true", help="one learning rate per setting")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "rl_razor")
    ap.add_argument("--report-only", action="store_true", help="redraw the table, fits and figures from --out")
    ap.add_argument("--from-sweep", type=Path, metavar="RESULTS",
                    help="the table, fits and figures of a sweep of benchmarks/rl_razor.toml into --out (default "
                         "RESULTS/rl_razor_report); --target: the runs' --stop-at-accuracy unless given (0 for runs of "
                         "fixed epochs: every run is kept)")
    ap.add_argument("--suite", type=Path, metavar="RESULTS",
                    help="the study in one command: run benchmarks/rl_razor.toml into RESULTS (resuming: complete runs "
                         "are skipped; the sweep's report in RESULTS/report draws the trade-off and forgetting-vs-KL "
                         "figures), then --from-sweep RESULTS")
    args = ap.parse_args(argv)
    if args.suite is not None:
        from forgetting import sweep

        code = sweep.main([str(ROOT / "benchmarks" / "rl_razor.toml"), "--results-dir", str(args.suite),
                           "--report-dir", str(args.suite / "report")])
        if code:
            return code
        args.from_sweep = args.suite
    if args.from_sweep is not None:
        out = args.out if "--out" in (argv or sys.argv) else args.from_sweep / "rl_razor_report"
        stop = from_sweep(args.from_sweep, out)
        target = args.target if "--target" in (argv or sys.argv) else stop
        report(out, target)
        return 0
    if args.report_only:
        report(args.out, args.target)
        return 0
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    rows, trajectories = [], []
    for seed in args.seeds:
        d = make_data(args.data_dir, args.n_old, args.n_parity_base, seed, args.base_labels)
        base = train_base(d, seed, args.base_epochs)
        b = measure(base, base, d)
        print(f"seed {seed}: base old acc {b['old_acc']:.3f}, new acc {b['new_acc']:.3f}, "
              f"new mass {b['new_mass']:.3f}", flush=True)
        for label, method, lam in SETTINGS:
            for lr in LRS[-1:] if args.quick else LRS:
                r = finetune(base, d, method, lam, lr, seed, args)
                trajectories += [{**t, "setting": label, "lr": lr, "seed": seed, "forgetting": b["old_acc"] - t["old_acc"]}
                                 for t in r.pop("trajectory")]
                r.update(setting=label, method=method, lam=lam, lr=lr, seed=seed, base_old_acc=b["old_acc"],
                         base_new_acc=b["new_acc"], forgetting=b["old_acc"] - r["old_acc"])
                rows.append(r)
                print(f"  {label:12s} lr {lr:g}: new {r['new_acc']:.3f} old {r['old_acc']:.3f} "
                      f"forget {r['forgetting']:+.3f} kl_new {r['kl_new']:.3f} kl_old {r['kl_old']:.3f} "
                      f"|dθ| {r['dtheta']:.2f} steps {r['steps']} ({r['seconds']:.1f}s)", flush=True)
    wall = time.perf_counter() - t_start
    import pandas as pd

    args.out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out / "runs.csv", index=False)
    pd.DataFrame(trajectories).to_csv(args.out / "trajectories.csv", index=False)
    report(args.out, args.target, wall, {k: str(v) for k, v in vars(args).items()})
    return 0


PREDICTORS = {"kl_new": "KL(π0 ‖ π), new-task inputs", "dtheta": "‖θ − θ0‖₂", "kl_old": "KL(π0 ‖ π), old-task inputs"}


def report(out: Path, target: float, wall: float | None = None, argv: dict | None = None) -> None:
    """The table, the fits and the figures from ``runs.csv`` and ``trajectories.csv`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from forgetting.metrics import pareto_front

    df, traj = pd.read_csv(out / "runs.csv"), pd.read_csv(out / "trajectories.csv")
    matched = df[df.new_acc >= target]
    table = matched.groupby("setting", sort=False).agg(
        runs=("forgetting", "size"), new_acc=("new_acc", "mean"), new_acc_min=("new_acc", "min"),
        new_acc_max=("new_acc", "max"), old_acc=("old_acc", "mean"),
        forgetting=("forgetting", "mean"), forgetting_sd=("forgetting", "std"), kl_new=("kl_new", "mean"),
        kl_old=("kl_old", "mean"), dtheta=("dtheta", "mean"), steps=("steps", "mean"))
    missed = df[df.new_acc < target].groupby("setting", sort=False).size()
    table["missed target"] = missed.reindex(table.index).fillna(0).astype(int)
    print(f"\nruns at new-task accuracy >= {target:.0%} ({len(matched)} of {len(df)}):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    cols = ["setting", *table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in table.iterrows():
        cells = [f"{int(round(v))}" if k in ("runs", "steps", "missed target") else f"{v:.3f}" for k, v in r.items()]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    per_run = df[[c for c in ("setting", "seed", "lr", "new_acc", "stopped", "steps", "old_acc", "forgetting", "kl_new")
                  if c in df]].sort_values(["setting", "seed"], kind="stable")
    print("\nevery run: new-task accuracy where it ended (stopped: 1 = reached the target, 0 = trained all its epochs):")
    print(per_run.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    per_run.to_csv(out / "per_run.csv", index=False)
    families = {"pooled": matched, "unpenalised (λ = 0)": matched[matched.lam == 0],
                "penalised (+kl)": matched[matched.lam > 0]}
    families.update({s: g for s, g in matched.groupby("setting", sort=False)})
    law = {fam: {pred: fits(part[pred].to_numpy(), part["forgetting"].to_numpy()) for pred in PREDICTORS}
           for fam, part in families.items()}
    print("\nforgetting against each predictor, R² of the linear / quadratic least-squares fit:")
    print(f"  {'family':22s} " + "  ".join(f"{p:>13s}" for p in PREDICTORS))
    for fam, by_pred in law.items():
        print(f"  {fam:22s} " + "  ".join(f"{v['r2_deg1']:6.3f}/{v['r2_deg2']:6.3f}" for v in by_pred.values()))
    if wall is not None:
        print(f"\nwall time {wall:.0f} s")
    (out / "law.json").write_text(json.dumps({"fits": law, "wall_s": wall, "args": argv}, indent=1))

    settings = list(dict.fromkeys(df.setting))
    colours = dict(zip(settings, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for s in settings:
        t = traj[traj.setting == s]
        ax.scatter(t.new_acc, t.old_acc, s=4, alpha=0.15, color=colours[s])
        front = pareto_front(t.new_acc.to_numpy(), t.old_acc.to_numpy())
        ax.plot(t.new_acc.to_numpy()[front], t.old_acc.to_numpy()[front], color=colours[s], label=s)
        f = df[df.setting == s]
        ax.scatter(f.new_acc, f.old_acc, s=25, color=colours[s], edgecolor="black", linewidth=0.5)
    if target > 0:
        ax.axvline(target, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("new task (parity) accuracy")
    ax.set_ylabel("old task (permuted digit) accuracy")
    ax.set_title("Pareto frontier per method (dots: end points; faint: every evaluation)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for ax, (pred, label) in zip(axes, PREDICTORS.items()):
        for s in settings:
            f = matched[matched.setting == s]
            ax.scatter(f[pred], f.forgetting, s=22, color=colours[s], label=s)
        x = matched[pred].to_numpy()
        grid = np.linspace(0, x.max() * 1.05, 100)
        for deg, ls in ((1, "-"), (2, "--")):
            fit = law["pooled"][pred]
            if f"coef_deg{deg}" in fit:
                ax.plot(grid, np.polyval(fit[f"coef_deg{deg}"], grid), color="black", ls=ls, lw=1,
                        label=f"pooled, degree {deg}: R² {fit[f'r2_deg{deg}']:.2f}")
        ax.set_xlabel(label)
        ax.set_ylabel("forgetting (old-task accuracy drop)")
        ax.set_title(f"runs at new-task accuracy >= {target:.0%}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "forgetting_vs_predictors.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
