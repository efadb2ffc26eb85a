"""Run the experiments of a JSON file (a list of ``make_config`` keyword dicts) one after the other in every
process of a launch (``accelerate launch ... tests/distributed_driver.py FILE``): the device-count tests start
one launch for several runs, so the processes and their group are paid for once.

An entry may carry ``_resume`` (run with ``resume=True``) and ``_kill`` ({"rank": r, "task": t}: that rank
dies, as if killed, at its third step of task t, after rank 0 wrote the checkpoint of task t - 1) or
``_count_eval`` (a folder: each rank writes there how many test examples its model passes saw, rank{r}.json)."""

import json
import os
import sys

from forgetting.registry import make_config
from forgetting.running import run_experiment
from forgetting.train import Trainer


def die_at(task: int) -> None:
    step, seen = Trainer.step, []

    def dying(self, batch, t, epoch):
        if t == task:
            seen.append(t)
            if len(seen) == 3:
                os._exit(9)
        return step(self, batch, t, epoch)

    Trainer.step = dying


def count_eval() -> list[int]:
    """Count the test examples this process's evaluator runs the model on (its part of each test set)."""
    from forgetting.evaluate import Evaluator

    seen, run = [0], Evaluator._logits_of

    def counting(self, model, data, task, index):
        seen[0] += len(data) if index is None else len(index)
        return run(self, model, data, task, index)

    Evaluator._logits_of = counting
    return seen


if __name__ == "__main__":
    for options in json.loads(open(sys.argv[1], encoding="utf-8").read()):
        resume, kill = options.pop("_resume", False), options.pop("_kill", None)
        counts = options.pop("_count_eval", None)
        seen = count_eval() if counts else None
        if kill and int(os.environ.get("RANK", "0")) == kill["rank"]:
            die_at(kill["task"])
        run_experiment(make_config(**options), resume=resume, resolved=True)
        if counts:
            with open(os.path.join(counts, f"rank{os.environ.get('RANK', '0')}.json"), "w", encoding="utf-8") as f:
                json.dump(seen[0], f)
