"""One run on several processes (``accelerate launch`` / ``torchrun``): data parallelism that gives the
numbers one process gives at the same global batch.

Every rank builds the same stream, model and methods from the same seed and draws the same shuffled
*global* batch (``--batch-size``) from the same seeded generator; it then keeps its contiguous shard of
it (``shard``), so the union of the ranks' shards is exactly the one-process batch. The loss of a batch
is a mean over its units (examples for classifiers, tokens that carry loss for causal LMs); rank r's
mean over its n_r of the batch's N units enters the gradient weighted by n_r / N (``weight``), and the
gradients are summed over the ranks (``reduce_grads``, one all-reduce of a flat buffer, what DDP's
bucketed all-reduce computes), so the update is the one-process update up to the order of float
summation. Penalties that do not depend on the batch (EWC, L2-SP) are the same on every rank and sum to
themselves. The frozen references are never wrapped: each rank keeps its own eval-mode copy, run under
no_grad. Process groups come from accelerate (``PartialState``: gloo on CPU, NCCL on GPUs).

What cannot give the same numbers is refused (``check``, ``check_model``): methods that keep state of the
examples each process saw (DER's logits) or draw dropout twice (R-Drop), methods not checked yet (SI, MAS,
Avalanche's strategies), a KL composed with replay (its mean is over the new task's examples of the batch,
not the batch's units), on-policy sampling, fp16's loss scaler, BatchNorm (statistics over a shard).
Dropout draws different masks for an example on N processes than on one: the numbers then agree in
distribution only (documented in the README, not refused: the MLP's default dropout is 0.2).

FSDP (``fsdp_selected``: the launch's accelerate config) shards the live model with torch's FSDP2 instead of
keeping it whole on every rank (``forgetting.fsdp``): the same batches, shares and sums, the gradients
reduce-scattered by FSDP set to sum; methods beyond naive and kl, models beyond the MLP and GPT-2, LoRA,
generation and lm-eval are refused
under it (``check_fsdp``).

SyncBatchNorm is GPU-only in torch 2.14 (a CPU tensor raises ValueError), hence the BatchNorm refusal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import BadInput

# method parts whose update on N processes equals the one-process update (tests/test_distributed.py)
SHARDABLE = ("naive", "kl", "ewc", "ewc_online", "l2sp", "replay", "joint")


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes (``size`` 1: no collectives)."""

    rank: int = 0
    size: int = 1
    backend: str | None = None
    fsdp: bool = False  # the live model is sharded (``forgetting.fsdp``): every rank must run its every forward

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def describe(self, global_batch: int) -> dict:
        """What the manifest records of how the run was spread."""
        return {"world_size": self.size, "per_device_batch": global_batch // self.size, "global_batch": global_batch,
                "backend": self.backend,
                **({"sharding": "fsdp2"} if self.fsdp else {})}

    # --- data ---------------------------------------------------------------------------------
    def shard(self, batch):
        """This rank's contiguous part of a global batch (sizes differ by at most one): views, no copy."""
        if not self.distributed:
            return batch
        start, length = self.bounds(len(batch))
        return narrow(batch, start, length)

    def bounds(self, n: int) -> tuple[int, int]:
        """(start, length) of this rank's part of n rows: ``torch.tensor_split``'s, the first n % size parts
        one longer."""
        base, extra = divmod(n, self.size)
        return self.rank * base + min(self.rank, extra), base + (self.rank < extra)

    def part(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of ``index`` (the examples it evaluates or caches; sizes differ by at most
        one), so that ``gather_rows`` of the ranks' results lists them in ``index`` order."""
        if not self.distributed:
            return index
        return index.narrow(0, *self.bounds(len(index)))

    def passes_owed(self, n: int, batch_size: int) -> int:
        """How many more forward passes of ``batch_size`` the rank with the longest part of ``n`` rows runs than
        this rank (at least one pass each, even on an empty part): under FSDP a forward is a collective, so a
        rank with fewer batches runs that many passes more on one example and drops them."""
        passes = lambda rows: max(1, -(-rows // batch_size))  # noqa: E731
        return passes(-(-n // self.size)) - passes(self.bounds(n)[1])

    # --- collectives ----------------------------------------------------------------------------
    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's ``rows`` (a tensor of per-example rows, the results of its ``part``) concatenated in rank
        order, on every rank: what one process computes over all the examples."""
        if not self.distributed:
            return rows
        import torch.distributed as dist

        n = torch.tensor([rows.shape[0]], dtype=torch.long, device=rows.device)
        sizes = [torch.zeros_like(n) for _ in range(self.size)]
        dist.all_gather(sizes, n)
        sizes = [int(s) for s in sizes]
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        blocks = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(blocks, padded.contiguous())
        return torch.cat([b[:k] for b, k in zip(blocks, sizes)])

    def gather_objects(self, items: list) -> list:
        """Every rank's list (e.g. decoded generations of its part) concatenated in rank order, on every rank."""
        if not self.distributed:
            return items
        import torch.distributed as dist

        boxes = [None] * self.size
        dist.all_gather_object(boxes, items)
        return [x for box in boxes for x in box]

    def reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the ranks (each already weighted by its share of the batch).

        A parameter whose gradient is None on every rank stays None (Adam skips it, as in one process);
        one that has a gradient on some rank gets the sum (zeros stand in for the others)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                         + [torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)])
        dist.all_reduce(flat)
        offset = 0
        present = flat[-len(params):]
        for p, seen in zip(params, present.tolist()):
            n = p.numel()
            if seen:
                p.grad = flat[offset:offset + n].view_as(p)  # a view of the summed buffer: no copy
            offset += n

    def sum_floats(self, values: list[float], device) -> list[float]:
        """Element-wise sums over the ranks (the batch's loss parts, each weighted by the rank's share)."""
        if not self.distributed:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (the decisions only rank 0 may take: skip, resume point)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


SINGLE = World()


def take(batch, rows: torch.Tensor):
    """The batch's examples at ``rows`` (tensor inputs, or dicts of per-example tensors)."""
    from .streams.base import Batch

    inputs = batch.inputs
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.index_select(0, rows.to(inputs.device))
    elif isinstance(inputs, dict):
        inputs = {k: v.index_select(0, rows.to(v.device)) for k, v in inputs.items()}
    else:
        raise BadInput(f"cannot split a batch of {type(inputs).__name__} inputs over processes")
    pick = lambda t: t.index_select(0, rows.to(t.device))  # noqa: E731
    return Batch(inputs, pick(batch.targets), pick(batch.task_ids), pick(batch.index))


def narrow(batch, start: int, length: int):
    """The batch's examples ``start:start + length`` as views (tensor inputs, or dicts of per-example tensors)."""
    from .streams.base import Batch

    inputs = batch.inputs
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.narrow(0, start, length)
    elif isinstance(inputs, dict):
        inputs = {k: v.narrow(0, start, length) for k, v in inputs.items()}
    else:
        raise BadInput(f"cannot split a batch of {type(inputs).__name__} inputs over processes")
    cut = lambda t: t.narrow(0, start, length)  # noqa: E731
    return Batch(inputs, cut(batch.targets), cut(batch.task_ids), cut(batch.index))


def launched_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE`` of accelerate launch / torchrun), 1 if none."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def fsdp_selected() -> bool:
    """Whether the launcher's accelerate config selects FSDP (``accelerate launch --use_fsdp`` or
    ``distributed_type: FSDP`` set ``ACCELERATE_USE_FSDP`` in every rank's environment)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1", "yes")


def check(config, size: int) -> None:
    """BadInput where a run cannot give its one-process numbers on ``size`` processes (every rank says so)."""
    if size <= 1:
        return
    if config.batch_size % size:
        raise BadInput(f"--batch-size {config.batch_size}: not divisible by the {size} processes of this launch "
                       f"(the global batch is split evenly); allowed: a multiple of {size}")
    parts = config.method.name.split("+")
    bad = [p for p in parts if p not in SHARDABLE]
    if bad:
        raise BadInput(f"--method {config.method.name}: {bad[0]} cannot run on {size} processes with the numbers of one "
                       f"(it keeps state of the examples each process sees, or depends on dropout draws); allowed "
                       f"with a launcher: {', '.join(SHARDABLE)}")
    if "kl" in parts and any(p in ("replay", "joint") for p in parts) \
            and not config.hparams.get("kl_on_replayed", False):
        raise BadInput(f"--method {config.method.name}: the KL's mean over the new task's examples of each batch does "
                       f"not split over {size} processes; allowed: --kl-on-replayed, or kl or replay alone")
    if getattr(config, "objective", "sft") not in (None, "sft"):
        raise BadInput(f"--objective {config.objective}: on-policy sampling is not split over processes; allowed with "
                       "a launcher: sft")
    if getattr(config, "amp", "off") == "fp16":
        raise BadInput("--amp fp16: the loss scaler's skipped steps are per process; allowed with a launcher: off, bf16")
    if fsdp_selected():
        check_fsdp(config, parts)


# what runs sharded under FSDP with the numbers of one process (tests/test_distributed.py)
FSDP_METHODS = ("naive", "kl")
FSDP_MODELS = ("mlp", "gpt2")


def check_fsdp(config, parts: list[str]) -> None:
    """BadInput for what runs under FSDP is not checked to give one process's numbers: methods whose state
    reads whole parameters (EWC's Fisher, L2-SP's anchor) or not tested sharded (replay, ...), models without a
    sharding plan (``fsdp.units``), mixed precision."""
    bad = [p for p in parts if p not in FSDP_METHODS]
    if bad:
        raise BadInput(f"--method {config.method.name}: {bad[0]} is not supported under FSDP (its state reads whole "
                       f"parameters); allowed with an FSDP launch: {', '.join(FSDP_METHODS)}, or a launch without FSDP")
    if config.model.name not in FSDP_MODELS:
        raise BadInput(f"--model {config.model.name}: no FSDP sharding plan for it; allowed with an FSDP launch: "
                       f"{', '.join(FSDP_MODELS)}, or a launch without FSDP (DDP)")
    options, settings = getattr(config.model, "options", {}), getattr(config.model, "settings", {})
    if options.get("lora_rank", 0):
        raise BadInput(f"--lora-rank {options['lora_rank']}: LoRA (its reference is the model with the adapters "
                       "disabled, its boundary merges them) is not sharded; allowed with an FSDP launch: 0")
    if settings.get("max_new_tokens", 0) or settings.get("lm_eval_tasks"):
        raise BadInput("--max-new-tokens / --lm-eval-tasks: generation and lm-eval run rank by rank, which a sharded "
                       "model's collective forward cannot; allowed with an FSDP launch: neither")
    if getattr(config, "amp", "off") != "off":
        raise BadInput(f"--amp {config.amp}: not checked under FSDP; allowed with an FSDP launch: off")


def check_model(model: torch.nn.Module, size: int, name: str) -> None:
    """BadInput for a model whose training pass depends on the rank's shard as a whole (BatchNorm's batch
    statistics: on N processes each would normalise over 1/N of the batch). SyncBatchNorm would give the one-
    process statistics but runs on GPUs only (torch 2.14 refuses CPU tensors), so it cannot be tested on the
    CPU processes that check the invariance here: not wired in."""
    if size <= 1:
        return
    norms = [type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        raise BadInput(f"--model {name}: its {norms[0]} normalises over each process's part of the batch, so {size} "
                       f"processes would not give the numbers of one; allowed with a launcher: models without "
                       f"BatchNorm (mlp, bert, gpt2)")


def init(device: torch.device) -> tuple[World, torch.device]:
    """Join the launcher's process group through accelerate; the world and this rank's device."""
    size = launched_size()
    if size <= 1:
        return SINGLE, device
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu")
    if state.num_processes != size:
        raise BadInput(f"WORLD_SIZE={size} but accelerate joined {state.num_processes} processes")
    local = state.device if device.type != "cpu" else device
    return World(rank=state.process_index, size=state.num_processes, backend=str(state.backend),
                 fsdp=fsdp_selected()), local
