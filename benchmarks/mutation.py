"""Mutation testing of the core modules with mutmut: the score per module, and the surviving mutants.

    python benchmarks/mutation.py                      # every module below
    python benchmarks/mutation.py penalty kl           # some of them (the keys of MODULES)
    python benchmarks/mutation.py --max-children 2 ... # mutmut's parallel workers (default: the CPU count)

Needs the ``[dev]`` extra (mutmut). Works on a copy of the project in a temporary directory (mutmut writes
its ``mutants/`` tree and state beside the sources), mutates one module at a time, and runs for each mutant
only the tests, among the fast ones named for that module, that executed the mutated function (mutmut's
own per-function test selection). A mutant is *killed* when a test fails or it times out, *survives*
otherwise; the score is killed / (killed + survived). The survivors are printed with their diffs; those
that are equivalent (no test could tell them apart) are listed in docs/DESIGN.md with the reason.
Not part of the test suite: it takes minutes to hours, see the README's testing section.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module key -> (source file, the fast tests that cover it: files or node ids; "!node id" leaves a slow test out
# (a CLI run, a plot) whose checks the hand-value tests beside it already make)
MODULES: dict[str, tuple[str, list[str]]] = {
    "penalty": ("forgetting/penalty.py", ["tests/test_penalty.py", "tests/test_lm_penalty.py", "tests/test_teacher.py",
                                          "tests/test_loop_penalty.py", "tests/test_drift.py"]),
    "kl": ("forgetting/methods/kl.py", ["tests/test_loop_penalty.py", "tests/test_teacher_cache.py",
                                        "tests/test_class_incremental.py", "tests/test_kl_inputs.py",
                                        "!tests/test_kl_inputs.py::test_cli_refuses_base_inputs_on_a_classifier_with_exit_2",
                                        "!tests/test_class_incremental.py::test_naive_learns_each_new_task_when_trained_over_the_seen_classes"]),
    "evaluate": ("forgetting/evaluate.py", ["tests/test_drift.py", "tests/test_class_incremental.py",
                                            "tests/test_core_behaviour.py", "tests/test_onpolicy.py"]),
    "evaluate_lm": ("forgetting/objectives/causal_lm/evaluate.py", [
        "tests/test_drift.py", "tests/test_lm_evaluate.py",
        "tests/test_lm_scores.py::test_the_evaluator_scores_generations_as_the_benchmark_does",
        "tests/test_lm_scores.py::test_a_run_writes_generation_scores_and_lm_eval_rows_at_task_boundaries"]),
    "classification": ("forgetting/objectives/classification.py", [
        "tests/test_classification_objective.py", "tests/test_objectives.py", "tests/test_loop_penalty.py",
        "tests/test_drift.py", "tests/test_class_incremental.py", "tests/test_methods.py", "tests/test_teacher.py",
        "tests/test_teacher_cache.py", "tests/test_onpolicy.py",
        "tests/test_oracle_sft.py", "tests/test_trainer_units.py",
        "!tests/test_class_incremental.py::test_naive_learns_each_new_task_when_trained_over_the_seen_classes",
        "!tests/test_oracle_sft.py::test_oracle_and_choice_are_refused_in_one_line_where_they_cannot_apply",
        "!tests/test_onpolicy.py::test_cli_refuses_one_sample_per_group_with_exit_2"]),
    "causal_lm": ("forgetting/objectives/causal_lm/__init__.py", [
        "tests/test_causal_lm_objective.py", "tests/test_objectives.py", "tests/test_loop_penalty.py",
        "tests/test_lm_fisher.py", "tests/test_drift.py", "tests/test_lm.py", "tests/test_onpolicy.py",
        "tests/test_oracle_sft.py", "tests/test_kl_inputs.py",
        "tests/test_lm_penalty.py",
        "!tests/test_lm.py::test_lm_runs_plot_nll_curves_and_the_nll_summary",
        "!tests/test_kl_inputs.py::test_cli_refuses_base_inputs_on_a_classifier_with_exit_2",
        "!tests/test_oracle_sft.py::test_oracle_and_choice_are_refused_in_one_line_where_they_cannot_apply",
        "!tests/test_onpolicy.py::test_cli_refuses_one_sample_per_group_with_exit_2"]),
    "ewc": ("forgetting/methods/ewc.py", ["tests/test_methods.py", "tests/test_lm_fisher.py"]),
    "importance": ("forgetting/methods/importance.py", ["tests/test_methods.py", "tests/test_lm_fisher.py"]),
    "metrics": ("forgetting/metrics.py", ["tests/test_metrics.py"]),
    "train": ("forgetting/train.py", [
        "tests/test_loop_penalty.py", "tests/test_teacher.py", "tests/test_optim.py", "tests/test_reliability.py",
        "tests/test_stop_at_accuracy.py", "tests/test_base_and_eval_only.py", "tests/test_oracle_sft.py",
        "tests/test_trainer_units.py",
        "!tests/test_reliability.py::test_full_disk_is_one_line_naming_the_path_and_where",
        "!tests/test_reliability.py::test_nan_loss_on_the_cli_is_one_line_without_traceback",
        "!tests/test_reliability.py::test_a_claimed_run_is_refused_with_one_line_and_left_alone",
        "!tests/test_optim.py::test_mixed_precision_on_cpu_is_refused_in_one_line",
        "!tests/test_stop_at_accuracy.py::test_rl_razor_from_sweep_lists_each_run_where_it_ended",
        "!tests/test_base_and_eval_only.py::test_a_checkpoint_not_trained_again_evaluates_bitwise_as_loaded",
        "!tests/test_base_and_eval_only.py::test_evaluation_only_bad_input_is_one_line_exit_2",
        "!tests/test_oracle_sft.py::test_oracle_and_choice_are_refused_in_one_line_where_they_cannot_apply"]),
    # the on-policy code: --objective pg, its rewards, and the sampled KL estimators
    "kl_estimators": ("forgetting/kl_estimators.py", ["tests/test_kl_estimators.py"]),
    "policy_gradient": ("forgetting/policy_gradient.py", ["tests/test_policy_gradient.py"]),
    "rewards": ("forgetting/rewards.py", ["tests/test_onpolicy.py", "tests/test_policy_gradient.py",
                                          "tests/test_oracle_sft.py"]),
    "onpolicy": ("forgetting/onpolicy.py", ["tests/test_onpolicy.py"]),
}

STATUS = re.compile(r"^\s*(\S+__mutmut_\d+): (.+)$")


def config(source: str, tests: list[str], timeout_multiplier: float = 15.0) -> str:
    """The [tool.mutmut] table for one module (toml)."""
    quote = lambda xs: "[" + ", ".join(f'"{x}"' for x in xs) + "]"  # noqa: E731
    left_out = [a for t in tests if t.startswith("!") for a in ("--deselect", t[1:])]
    return (f"\n[tool.mutmut]\nsource_paths = {quote(['forgetting'])}\nonly_mutate = {quote([source])}\n"
            f"pytest_add_cli_args = {quote(['-p', 'no:cacheprovider', '-m', 'not slow', '-q', *left_out])}\n"
            f"pytest_add_cli_args_test_selection = {quote([t for t in tests if not t.startswith('!')])}\n"
            f"timeout_multiplier = {timeout_multiplier}\n"
            f"also_copy = {quote(['benchmarks', 'examples', 'README.md', 'LICENSE'])}\n"
            'process_isolation = "forkserver"\nuse_git_change_detection = false\n')


def run_module(key: str, work: Path, max_children: int | None, names: list[str] = (),
               timeout_multiplier: float = 15.0) -> dict:
    source, tests = MODULES[key]
    project = work / key
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".git", ".venv", "results", "mutants", "__pycache__",
                                                                  "*.egg-info", "build"))
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + config(source, tests, timeout_multiplier))
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    env.setdefault("FORGETTING_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    mutmut = [sys.executable, "-m", "mutmut"]
    start = time.monotonic()
    cmd = [*mutmut, "run"] + (["--max-children", str(max_children)] if max_children else []) + list(names)
    run = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    (work / f"{key}.log").write_text(run.stdout + run.stderr)
    res = subprocess.run([*mutmut, "results", "--all", "true"], cwd=project, env=env, capture_output=True, text=True)
    status = {m.group(1): m.group(2).strip() for m in map(STATUS.match, res.stdout.splitlines()) if m}
    if names:  # only these were run (the others stay "not checked")
        status = {n: s for n, s in status.items() if any(fnmatch.fnmatchcase(n, pat) for pat in names)}
    survivors = sorted(n for n, s in status.items() if s == "survived")
    diffs = {n: subprocess.run([*mutmut, "show", n], cwd=project, env=env, capture_output=True, text=True).stdout
             for n in survivors}
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    return {"key": key, "source": source, "seconds": seconds, "counts": counts, "survivors": diffs,
            "returncode": run.returncode}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("modules", nargs="*", default=[], metavar="MODULE", help=f"some of: {', '.join(MODULES)} (default: all)")
    p.add_argument("--max-children", type=int, default=None, help="mutmut's parallel workers")
    p.add_argument("--keep", metavar="DIR", default=None, help="work in DIR and keep it (mutants, logs)")
    p.add_argument("--mutants", metavar="FILE", default=None, help="run only the mutants named in FILE, one a line "
                   "(e.g. the survivors of an earlier run, after new tests; names are stable while the module is), or "
                   "matched by a line's wildcards (fnmatch: 'forgetting.methods.kl.*before_task*' is one function's)")
    p.add_argument("--timeout-multiplier", type=float, default=15.0, help="mutmut's: a mutant whose tests run longer "
                   "than this many times their clean time (+1 s) counts as killed (timeout); raise it on a loaded "
                   "machine, where a slow fork would otherwise pass for a kill")
    a = p.parse_args(argv)
    unknown = [m for m in a.modules if m not in MODULES]
    if unknown:
        p.error(f"unknown module {unknown[0]!r}: allowed are {', '.join(MODULES)}")
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="forgetting-mutation-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for key in a.modules or list(MODULES):
            prefix = MODULES[key][0].removesuffix(".py").removesuffix("/__init__").replace("/", ".") + "."
            names = [n for n in Path(a.mutants).read_text().split() if n.startswith(prefix)] if a.mutants else []
            if a.mutants and not names:
                print(f"{MODULES[key][0]:36s} no mutant of it named in {a.mutants}", flush=True)
                continue
            r = run_module(key, work, a.max_children, names, a.timeout_multiplier)
            rows.append(r)
            c = r["counts"]
            killed = c.get("killed", 0) + c.get("timeout", 0)
            tested = killed + c.get("survived", 0)
            score = 100.0 * killed / tested if tested else float("nan")
            others = {k: v for k, v in c.items() if k not in ("killed", "timeout", "survived")}
            print(f"{r['source']:36s} {score:5.1f} %  killed {killed:4d}  survived {c.get('survived', 0):3d}  "
                  f"{' '.join(f'{k} {v}' for k, v in sorted(others.items()))}  {r['seconds'] / 60:5.1f} min", flush=True)
            for name, diff in r["survivors"].items():
                print(f"  survived: {name}\n" + "\n".join("    " + line for line in diff.splitlines()), flush=True)
            if r["returncode"] != 0 and not c:
                print(f"  mutmut failed: see {work / (key + '.log')}", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
