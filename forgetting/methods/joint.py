"""``joint``: train on the union of every task seen so far, the upper bound of the comparison.

Each epoch of task t is one shuffled pass over the training sets of tasks 0..t together (so
epochs grow with t), starting from the model after task t - 1 like every other method.
Examples of earlier tasks carry their own task id (their head in ``task``) and index -1.
"""

from __future__ import annotations

import torch

from ..streams.base import gather_examples
from .base import Method as Base


class Method(Base):
    name = "joint"
    changes_batches = True

    def batches(self, trainer, task, epoch):
        datasets = [t.train for t in trainer.stream.tasks]
        sizes = [len(datasets[k]) for k in range(task + 1)]
        task_ids = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(sizes)])
        index = torch.cat([torch.arange(n) for n in sizes])
        order = torch.randperm(len(task_ids), generator=trainer.generator)
        bs = trainer.config.batch_size
        for start in range(0, len(order), bs):
            sel = order[start : start + bs]
            batch = gather_examples(datasets, task_ids[sel], index[sel])
            batch.index = torch.where(batch.task_ids == task, batch.index, torch.full_like(batch.index, -1))
            yield batch
