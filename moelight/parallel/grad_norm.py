"""Gradient clipping by the true global norm when gradients are DTensor shards on several meshes.

Under FSDP2 each rank holds a shard of every dense gradient (over all ranks) and a shard of its
experts' gradients (over the ranks holding the same experts). Every element of the model's
gradient then lives on exactly one rank, so the squared norm of the whole model is the sum over
all ranks of the squared norms of the local shards: one all-reduce. An element replicated on a
mesh dimension (`Replicate()`) is counted once by dividing by its copies; a plain tensor gradient
is a replica on every rank.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def _local_and_copies(grad: torch.Tensor, world_size: int) -> tuple[torch.Tensor, int]:
    if isinstance(grad, DTensor):
        mesh = grad.device_mesh
        copies = math.prod(mesh.size(i) for i, p in enumerate(grad.placements) if p.is_replicate())
        return grad.to_local(), copies
    return grad, world_size


@torch.no_grad()
def clip_sharded_grads(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` over the whole distributed model; returns the norm before clipping."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    locals_ = [_local_and_copies(p.grad, world) for p in params if p.grad is not None]
    if not locals_:
        return torch.zeros(())
    device = locals_[0][0].device
    sq = torch.zeros((), dtype=torch.float32, device=device)
    for local, copies in locals_:
        if local.numel():
            sq += torch.linalg.vector_norm(local.float(), 2).pow(2).to(device) / copies
    if world > 1:
        dist.all_reduce(sq, op=dist.ReduceOp.SUM)
    total = sq.sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for local, _ in locals_:
        local.mul_(coef.to(local.device, local.dtype))
    return total
