"""Run the experiments of a JSON file (a list of ``make_config`` keyword dicts) one after the other in every
process of a launch (``accelerate launch ... tests/distributed_driver.py FILE``): the device-count tests start
one launch for several runs, so the processes and their group are paid for once.

An entry may carry ``_resume`` (run with ``resume=True``) and ``_kill`` ({"rank": r, "task": t}: that rank
dies, as if killed, at its third step of task t, after rank 0 wrote the checkpoint of task t - 1) or
``_count_eval`` (a folder: each rank writes there how many test examples its model passes saw, rank{r}.json)
or ``_check_refs`` (a folder: each rank checks at every boundary that the references it trained against are
bitwise what they were when taken, in eval mode, without gradients, whole tensors while the live model's are
shards under FSDP, and writes what it found to refs{r}.json)."""

import json
import os
import sys

from forgetting.gc_freeze import freeze_after_imports
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


SNAPSHOT = Trainer.snapshot_boundary


def check_refs() -> dict:
    """Watch the references over the run (see the module's docstring); the findings, filled as it runs."""
    import torch
    from torch.distributed.tensor import DTensor

    found = {"boundaries": 0, "checked": 0, "unchanged": True, "eval": True, "no_grad": True, "whole": True,
             "live_sharded": True}
    snap, saved = Trainer.snapshot_boundary, {}

    def watching(self, t):
        for name, ref in (("previous", self.previous_model), ("base", self.base_model)):
            if ref is None or name not in saved:
                continue
            found["checked"] += 1
            params = dict(ref.named_parameters())
            found["unchanged"] &= all(torch.equal(params[k], v) for k, v in saved[name].items())
            found["eval"] &= not any(m.training for m in ref.modules())
            found["no_grad"] &= all(not p.requires_grad and p.grad is None for p in params.values())
            found["whole"] &= not any(isinstance(p, DTensor) for p in params.values())
        found["live_sharded"] &= all(isinstance(p, DTensor) for p in self.model.parameters())
        snap(self, t)
        found["boundaries"] += 1
        for name, ref in (("previous", self.previous_model), ("base", self.base_model)):
            saved[name] = {k: v.detach().clone() for k, v in ref.named_parameters()}

    Trainer.snapshot_boundary = watching
    return found


if __name__ == "__main__":
    freeze_after_imports()  # as a command's process does
    for options in json.loads(open(sys.argv[1], encoding="utf-8").read()):
        resume, kill = options.pop("_resume", False), options.pop("_kill", None)
        counts, refs = options.pop("_count_eval", None), options.pop("_check_refs", None)
        seen = count_eval() if counts else None
        found = check_refs() if refs else None
        if kill and int(os.environ.get("RANK", "0")) == kill["rank"]:
            die_at(kill["task"])
        run_experiment(make_config(**options), resume=resume, resolved=True)
        if counts:
            with open(os.path.join(counts, f"rank{os.environ.get('RANK', '0')}.json"), "w", encoding="utf-8") as f:
                json.dump(seen[0], f)
        if refs:
            Trainer.snapshot_boundary = SNAPSHOT  # the next run unwatched
            with open(os.path.join(refs, f"refs{os.environ.get('RANK', '0')}.json"), "w", encoding="utf-8") as f:
                json.dump(found, f)
