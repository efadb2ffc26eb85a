"""General ability through lm-evaluation-harness: the live model scored on lm-eval tasks, no reload, no copy.

At each task boundary the model being trained (its Hugging Face module, ``CausalLM.lm``) and its
tokenizer are wrapped in lm-eval's ``HFLM`` (which keeps the objects it is given) and
``simple_evaluate`` runs the tasks; each task's main metric (the first its results list, e.g.
``acc``) becomes one row. lm-eval's random seeds are not set (it would reseed torch and change the
training that follows); every random state it could touch is put back afterwards.

Tasks are lm-eval's own (``hellaswag``, ``arc_easy``, ``mmlu``: they download their data) or YAML
files in ``forgetting/lm_eval_tasks`` (``forgetting_general_mc``: a multiple-choice JSON Lines
file in the repository, offline) and in ``--lm-eval-include-path``. A local task's relative
``data_files`` are resolved against its YAML's folder, so it runs from any working directory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...errors import BadInput, first_line

BUNDLED = Path(__file__).resolve().parents[2] / "lm_eval_tasks"


def local_tasks(folders: list[Path]) -> dict[str, dict]:
    """name -> config of every plain YAML task under ``folders`` (relative data_files made absolute)."""
    import yaml

    found: dict[str, dict] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.yaml")):
            try:
                config = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError):
                continue  # tags such as !function: lm-eval's TaskManager reads it
            if not isinstance(config, dict) or not isinstance(config.get("task"), str):
                continue
            files = (config.get("dataset_kwargs") or {}).get("data_files")
            if isinstance(files, dict):
                config["dataset_kwargs"]["data_files"] = {k: str(path.parent / v) if not Path(v).is_absolute() else v
                                                          for k, v in files.items()}
            elif isinstance(files, str) and not Path(files).is_absolute():
                config["dataset_kwargs"]["data_files"] = str(path.parent / files)
            found.setdefault(config["task"], config)
    return found


@contextlib.contextmanager
def random_states_kept():
    """Python's, NumPy's and torch's random states as they were, whatever runs inside."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


@contextlib.contextmanager
def quiet_harness():
    """lm-eval without its progress bars, its ``git describe`` and its environment report (not ours to record)."""
    import datasets
    import lm_eval.evaluator as evaluator

    saved = evaluator.get_git_commit_hash, evaluator.add_env_info
    bars = datasets.is_progress_bar_enabled()
    evaluator.get_git_commit_hash = lambda: None
    evaluator.add_env_info = lambda results: None
    datasets.disable_progress_bars()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        evaluator.get_git_commit_hash, evaluator.add_env_info = saved
        if bars:
            datasets.enable_progress_bars()


class Harness:
    """lm-eval's tasks run on the live model; ``rows`` gives one metric row per task."""

    def __init__(self, tasks: list[str], limit: int = 0, include_path: str = "", batch_size: int = 32,
                 max_length: int = 512, tokenizer=None):
        from ...extras import require

        require("lm", "--lm-eval-tasks", ("lm_eval",))
        self.names = list(tasks)
        self.tokenizer = tokenizer  # the stream's (the model's own); evaluate may be given another
        self.limit = limit or None
        self.batch_size = max(1, min(batch_size, 64))
        self.max_length = max_length
        folders = [BUNDLED]
        if include_path:
            user = Path(include_path).expanduser()
            if not user.is_dir():
                raise BadInput(f"--lm-eval-include-path: {include_path!r} is not a directory")
            folders.insert(0, user)
        self.include_path = include_path
        self.local = local_tasks(folders)
        self._manager = None
        unknown = [n for n in self.names if n not in self.local]
        if unknown:  # lm-eval's own (or tagged YAMLs of the include path): checked before anything is written
            known = set(self.manager().all_tasks)
            missing = [n for n in unknown if n not in known]
            if missing:
                raise BadInput(f"--lm-eval-tasks: unknown task {missing[0]!r}, allowed: lm-eval's tasks (e.g. hellaswag, "
                               f"arc_easy, mmlu), {', '.join(sorted(self.local))} or a task YAML of "
                               "--lm-eval-include-path")

    def manager(self):
        """lm-eval's task index with the include path (built once: it reads every task YAML lm-eval has)."""
        from lm_eval.tasks import TaskManager

        if self._manager is None:
            self._manager = TaskManager(include_path=self.include_path or None)
        return self._manager

    def _tasks_and_manager(self):
        from lm_eval.tasks import TaskManager

        if all(n in self.local for n in self.names):  # offline: lm-eval's own index is not read
            return [self.local[n] for n in self.names], TaskManager(include_path=str(BUNDLED), include_defaults=False)
        return [self.local.get(n, n) for n in self.names], self.manager()

    def evaluate(self, model: nn.Module, tokenizer=None) -> dict[str, tuple[str, float, int]]:
        """task -> (metric, value, examples) of the model as it is (put back in its mode afterwards)."""
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        lm = getattr(model, "lm", model)
        was = lm.training
        lm.eval()
        quiet = [logging.getLogger(n) for n in ("lm-eval", "lm_eval", "lm_eval.models.huggingface", "transformers")]
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(logging.ERROR)
        try:
            with random_states_kept(), torch.inference_mode(), quiet_harness():
                wrapped = HFLM(pretrained=lm, tokenizer=tokenizer, batch_size=self.batch_size,
                               max_length=self.max_length)
                tasks, manager = self._tasks_and_manager()
                out = simple_evaluate(model=wrapped, tasks=tasks, limit=self.limit, bootstrap_iters=0,
                                      log_samples=False, task_manager=manager, random_seed=None,
                                      numpy_random_seed=None, torch_random_seed=None, fewshot_random_seed=1234,
                                      verbosity="ERROR")
        except (KeyError, ValueError, FileNotFoundError) as e:
            raise BadInput(f"--lm-eval-tasks {','.join(self.names)}: {first_line(e)}") from None
        finally:
            lm.train(was)
            for q, level in zip(quiet, levels):
                q.setLevel(level)
        results = {}
        for name in self.names:
            metrics = out["results"].get(name)
            if metrics is None:
                raise BadInput(f"--lm-eval-tasks: lm-eval gave no results for {name!r}")
            key = next(k for k, v in metrics.items() if "," in k and "_stderr" not in k and isinstance(v, (int, float)))
            n = out.get("n-samples", {}).get(name, {}).get("effective", metrics.get("sample_len", 0))
            results[name] = (key.split(",")[0], float(metrics[key]), int(n or 0))
        return results

    def rows(self, model: nn.Module, first_index: int) -> list[dict]:
        """One row per task: eval_task numbered from ``first_index``, accuracy the task's main metric."""
        nan = float("nan")
        return [{"eval_task": first_index + j, "eval_task_name": name, "accuracy": value, "loss": nan,
                 "kl_base": nan, "n_eval": n, "lm_eval_metric": metric}
                for j, (name, (metric, value, n)) in enumerate(self.evaluate(model).items())]
