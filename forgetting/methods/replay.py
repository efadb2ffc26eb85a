"""``replay``: experience replay from a class-balanced reservoir buffer (composes with ``kl``).

After each task its training examples stream, in random order, through class-balancing
reservoir sampling (CBRS, Chrysakis & Moens 2020) into a buffer of ``replay_size`` examples
shared by all tasks: until it is full every example is kept; then an example of a class that
has never been the largest replaces a random example of a largest class, and an example of
such a "full" class c replaces a random stored example of c with probability m_c / n_c (m_c
stored, n_c seen). Classes are (task, target) pairs, so the two "0"s of two domain-incremental
tasks are two classes. While fine-tuning, each batch of the new task gets ``replay_batch_size``
buffer examples drawn uniformly without replacement (Chaudhry et al. 2019's experience replay).
The buffer keeps (task, index) references into the tasks' training sets; replayed examples
carry their own task id (their head in ``task``) and index -1.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..options import Option
from ..streams.base import Batch, concat_inputs, gather_examples
from .base import Method as Base


class ClassBalancedReservoir:
    """CBRS over (class, item) pairs; ``items`` maps each class to its stored items."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.generator: torch.Generator | None = None  # the run's generator, lent for each add()
        self.items: dict = defaultdict(list)
        self.seen: dict = defaultdict(int)
        self.full_classes: set = set()
        self.size = 0

    def _randint(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.generator))

    def _largest(self) -> list:
        top = max(len(v) for v in self.items.values())
        return [c for c, v in self.items.items() if len(v) == top]

    def add(self, cls, item, generator: torch.Generator) -> None:
        self.generator = generator
        try:
            self._add(cls, item)
        finally:
            self.generator = None  # not kept: a checkpoint must not hold a copy of the run's generator

    def _add(self, cls, item) -> None:
        self.seen[cls] += 1
        if self.size < self.capacity:
            self.items[cls].append(item)
            self.size += 1
        elif cls not in self.full_classes:
            largest = self._largest()
            victim = largest[self._randint(len(largest))]
            self.full_classes.update(largest)
            stored = self.items[victim]
            stored.pop(self._randint(len(stored)))
            self.items[cls].append(item)
        else:
            stored = self.items[cls]
            if float(torch.rand((), generator=self.generator)) * self.seen[cls] < len(stored):
                stored[self._randint(len(stored))] = item
        if self.size == self.capacity:
            self.full_classes.update(self._largest())

    def state_dict(self) -> dict:
        """Plain containers, in insertion order (ties between largest classes break by it)."""
        return {"capacity": self.capacity, "size": self.size, "items": [(c, list(v)) for c, v in self.items.items()],
                "seen": list(self.seen.items()), "full_classes": sorted(self.full_classes)}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.size = state["capacity"], state["size"]
        self.items = defaultdict(list, {tuple(c): [tuple(x) for x in v] for c, v in state["items"]})
        self.seen = defaultdict(int, {tuple(c): n for c, n in state["seen"]})
        self.full_classes = {tuple(c) for c in state["full_classes"]}

    def counts(self) -> dict:
        return {c: len(v) for c, v in self.items.items() if v}

    def all_items(self) -> list:
        return [(c, it) for c, v in self.items.items() for it in v]


class Method(Base):
    name = "replay"
    options = [
        Option("replay_size", int, 200, "examples in the replay buffer, over all tasks (200 is the smallest "
               "split-MNIST buffer of Buzzega et al. 2020)", minimum=1),
        Option("replay_batch_size", int, 0, "buffer examples added to each fine-tuning batch (0: as many as "
               "--batch-size, as in Chaudhry et al. 2019)", minimum=0),
    ]
    changes_batches = True

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.buffer: ClassBalancedReservoir | None = None

    def before_task(self, trainer, task) -> None:
        if self.buffer is None:
            self.buffer = ClassBalancedReservoir(self.hparams["replay_size"])

    def after_task(self, trainer, task) -> None:
        data = trainer.stream.tasks[task].train
        order = torch.randperm(len(data), generator=trainer.generator)
        _, targets = data.gather(order)
        for i, y in zip(order.tolist(), targets.tolist()):
            self.buffer.add((task, y), (task, i), trainer.generator)

    def state_dict(self) -> dict:
        return {"buffer": None if self.buffer is None else self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = None
        if state["buffer"] is not None:
            self.buffer = ClassBalancedReservoir(state["buffer"]["capacity"])
            self.buffer.load_state_dict(state["buffer"])

    def batches(self, trainer, task, epoch):
        datasets = [t.train for t in trainer.stream.tasks]
        stored = [it for _, it in self.buffer.all_items()] if self.buffer is not None else []
        k = min(self.hparams["replay_batch_size"] or trainer.config.batch_size, len(stored))
        refs = torch.tensor(stored, dtype=torch.long).reshape(-1, 2)
        for batch in super().batches(trainer, task, epoch):
            if k == 0:
                yield batch
                continue
            pick = refs[torch.randperm(len(refs), generator=trainer.generator)[:k]]
            old = gather_examples(datasets, pick[:, 0], pick[:, 1])
            yield Batch(concat_inputs([batch.inputs, old.inputs]), torch.cat([batch.targets, old.targets]),
                        torch.cat([batch.task_ids, old.task_ids]),
                        torch.cat([batch.index, torch.full_like(old.index, -1)]))
