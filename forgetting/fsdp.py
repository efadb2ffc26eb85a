"""The live model sharded over the ranks with torch's FSDP2 (``fully_shard``), when the launch selects FSDP.

Each rank holds 1/N of every parameter (and of Adam's moments: the optimiser is built on the shards); a
forward all-gathers a unit's parameters and frees them after, a backward reduce-scatters its gradients.
FSDP averages the gradients over the ranks; this loop weights each rank's loss by its share of the batch and
sums (``distributed``), so every unit is set to sum (divide factor 1, a plain SUM reduce-scatter: gloo has no
pre-multiplied sum): the step is the one-process step at the same global batch, as under DDP.

The frozen references (previous_model, base_model) are kept whole on every rank, made from the gathered
weights at each task boundary (``gather``, ``whole``): every rank's KL and kl_base need the reference on its
own examples, a whole copy is bitwise the one-process reference with no collective in its forward (so the
teacher cache and the penalty stay as they are), and it is frozen as everywhere else (eval mode, no grad).
It costs the memory of a whole model per reference: FSDP here spreads the live model, its gradients and the
optimiser's state, not the references. A checkpoint is the gathered whole state dict (rank 0 writes it, the
same file as one process); loading it shards it again on every rank from its own read (no collective).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one (each all-gathered on its own): a transformer's blocks (GPT-2's), else
    the MLP's layers; the root (embeddings, tied output layer, final norm) comes last."""
    blocks = [m for m in model.modules() if type(m).__name__ == "GPT2Block"]
    return blocks or [m for m in model.modules() if isinstance(m, nn.Linear)]


class Sharding:
    """The live model sharded in place (``fully_shard`` per unit, then the root), and a whole template of it
    (a plain copy taken before sharding) that the references and resumed runs are made from."""

    def __init__(self, model: nn.Module, device: torch.device):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        self.template = copy.deepcopy(model)  # whole, never trained: refilled from gathered weights
        # the run's device type (fully_shard's default mesh takes CUDA wherever it is available, even for --device cpu)
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        for unit in units(model):
            fully_shard(unit, mesh=mesh)
        # the root resharded after its forward too (FSDP's default keeps it gathered): kept gathered, the evaluation's
        # no_grad forward left GPT-2's root parameters (embeddings, final norm) unsharded and the next training
        # forward used them so, and its rows drifted from one process's (0.09 in loss after one task); resharded,
        # every forward gathers anew and the rows are one process's
        fully_shard(model, mesh=mesh, reshard_after_forward=True)
        for m in model.modules():
            if isinstance(m, FSDPModule):  # sum, not mean, over the ranks (the loop weights each rank's share)
                m.set_gradient_divide_factor(1.0)
                m.set_force_sum_reduction_for_comms(True)
        self.model = model

    def gather(self) -> dict[str, torch.Tensor]:
        """The live model's whole state dict on every rank (a collective: every rank calls it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))

    def whole(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        """The template holding ``weights`` (to be copied: ``teacher.frozen_copy``)."""
        self.template.load_state_dict(weights)
        return self.template

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        """Put whole ``weights`` (read by every rank) into the live model: each rank keeps its shard, no collective."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                full = weights[name]
                if isinstance(value, DTensor):
                    mine = distribute_tensor(full.to(value.device, value.dtype), value.device_mesh, value.placements,
                                             src_data_rank=None).to_local()
                    params[name].to_local().copy_(mine)
                else:
                    value.copy_(full)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter as a whole tensor (a shard is all-gathered: a collective)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
