"""``der``: Dark Experience Replay (Buzzega et al. 2020), and DER++ with ``--der-beta`` > 0.

A reservoir buffer (Vitter's algorithm R over every training example seen, from the first task on)
keeps examples with the logits the model gave them when they were trained on, and their labels.
At every step, once the buffer holds anything, ``der_batch_size`` stored examples are drawn
without replacement and passed through the model (a pass of their own, as in Mammoth), adding

    der_alpha * mean((model(x_buf) - z_buf)^2)          (DER: MSE to the stored logits, all outputs)
    der_beta  * CE(model(x_buf'), y_buf')               (DER++: a second, independent draw, its labels)

The stored logits play the role of our KL's teacher, but a teacher per example, frozen at the
step that example was learned (MSE on logits is the high-temperature limit of the KL penalty).
The buffer keeps (task, index) references into the tasks' training sets, so a replayed example
is gathered, and under ``--augment`` augmented afresh, as Mammoth stores non-augmented inputs and
augments them on replay; its logits are those of the augmented input it was trained on. Labels
use the example's own head in ``task``. Training batches stay the current task's alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..options import Option
from ..streams.base import gather_examples
from .base import Method as Base, Terms


class Reservoir:
    """Algorithm R: the n-th example seen (0-based) takes slot n while the buffer is not full, else a
    uniformly random slot j in [0, n] if j < capacity. Holds references, logits and labels."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.seen = 0
        self.refs: torch.Tensor | None = None  # [size, 2]: task, index in its training set
        self.logits: torch.Tensor | None = None  # [size, n_outputs], float32
        self.labels: torch.Tensor | None = None  # [size]: targets (output indices)

    def __len__(self) -> int:
        return 0 if self.refs is None else min(self.seen, self.capacity)

    def add(self, refs: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> None:
        if self.refs is None:
            self.refs = torch.zeros(self.capacity, 2, dtype=torch.long)
            self.logits = torch.zeros(self.capacity, logits.shape[1], dtype=torch.float32, device=logits.device)
            self.labels = torch.zeros(self.capacity, dtype=torch.long, device=labels.device)
        for i in range(len(refs)):
            if self.seen < self.capacity:
                slot = self.seen
            else:
                slot = int(torch.randint(0, self.seen + 1, (1,), generator=generator))
            self.seen += 1
            if slot < self.capacity:
                self.refs[slot] = refs[i]
                self.logits[slot] = logits[i].float()
                self.labels[slot] = labels[i]

    def draw(self, k: int, generator: torch.Generator) -> torch.Tensor:
        """Slots of ``k`` stored examples, drawn uniformly without replacement."""
        return torch.randperm(len(self), generator=generator)[:k]


class Method(Base):
    needs = frozenset({"class_distribution"})
    needs_why = "DER replays each example's class logits and labels over the head layout"
    name = "der"
    options = [
        Option("der_size", int, 200, "examples in the DER buffer, over all tasks (Buzzega et al. 2020: 200, 500, 5120)",
               minimum=1),
        Option("der_alpha", float, 0.3, "weight of the MSE between the logits of replayed examples and their stored "
               "logits (Mammoth's split-CIFAR-10 DER: 0.3; DER++: 0.1)", minimum=0.0),
        Option("der_beta", float, 0.0, "weight of the cross-entropy on a second draw of replayed examples (DER++ when "
               "above 0; Mammoth's split-CIFAR-10 DER++: 0.5)", minimum=0.0),
        Option("der_batch_size", int, 0, "replayed examples per step (0: as many as --batch-size)", minimum=0),
    ]
    strength_option = "der_alpha"

    def __init__(self, **hparams):
        super().__init__(**hparams)
        self.buffer = Reservoir(hparams["der_size"])
        self._pending = None

    def state_dict(self) -> dict:
        """The reservoir: its count of examples seen and what it holds (nothing is pending at a boundary)."""
        b = self.buffer
        return {"seen": b.seen, "refs": b.refs, "logits": b.logits, "labels": b.labels}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.seen = state["seen"]
        self.buffer.refs, self.buffer.logits, self.buffer.labels = state["refs"], state["logits"], state["labels"]

    def _replayed(self, trainer, slots: torch.Tensor):
        refs = self.buffer.refs[slots]
        datasets = [t.train for t in trainer.stream.tasks]
        order = torch.argsort(refs[:, 0], stable=True)  # gather_examples groups by task: keep rows aligned
        refs, slots = refs[order], slots[order]
        batch = gather_examples(datasets, refs[:, 0], refs[:, 1]).to(trainer.device)
        return batch, slots.to(self.buffer.logits.device)

    def penalties(self, trainer, batch, logits, task) -> Terms:
        current = (batch.task_ids == task) & (batch.index >= 0)
        self._pending = (task, batch.index[current].cpu(), logits.detach()[current], batch.targets[current])
        if len(self.buffer) == 0:
            return {}
        k = self.hparams["der_batch_size"] or trainer.config.batch_size
        gen = trainer.generator
        terms: Terms = {}
        old, slots = self._replayed(trainer, self.buffer.draw(k, gen))
        out = trainer.model(old.inputs).float()
        terms["der_mse"] = (F.mse_loss(out, self.buffer.logits[slots].to(out.device)), self.hparams["der_alpha"])
        if self.hparams["der_beta"] > 0:
            old, slots = self._replayed(trainer, self.buffer.draw(k, gen))
            out = trainer.layout.masked(trainer.model(old.inputs).float(), old.task_ids, task)
            terms["der_ce"] = (F.cross_entropy(out, self.buffer.labels[slots].to(out.device)), self.hparams["der_beta"])
        return terms

    def after_step(self, trainer, task) -> None:
        """The examples just trained on enter the reservoir with the logits they had (before the update)."""
        if self._pending is None:
            return
        t, index, logits, labels = self._pending
        self._pending = None
        refs = torch.stack([torch.full_like(index, t), index], dim=1)
        self.buffer.add(refs, logits, labels, trainer.generator)
