"""Expert gradients: kept off DDP's all-reduce, summed over the ranks holding the same experts,
and included, across expert shards, in the gradient norm used for clipping.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from moelight.experts import named_expert_parameters


def expert_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """Expert parameters by their names in `module`."""
    return {name: p for name, p, _ in named_expert_parameters(module)}


def reduce_expert_grads(params: list[nn.Parameter], edp_group, edp_size: int, world_size: int) -> None:
    """Sum each expert's gradient over its replicas and divide by the world size.

    Autograd already summed, through the all2all, the contributions of every rank of the EP group;
    DDP averages dense gradients over all W ranks, so dividing the sum by W gives the gradient of
    the same global-mean loss (the update of the single-process run). Missing gradients (no token
    reached these experts) become zeros so that collectives line up and the optimizer steps as it
    would with one process.
    """
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if not grads:
        return
    if edp_size > 1:
        for dtype in {g.dtype for g in grads}:
            group = [g for g in grads if g.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=edp_group)
            offset = 0
            for g in group:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
    for g in grads:
        g.div_(world_size)


def clip_by_global_norm(
    params: list[torch.Tensor], expert_ids: set[int], max_norm: float, ep_group
) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` over the whole model, whose experts are spread over `ep_group`.

    Dense gradients are identical on every rank (after DDP); expert gradients are identical on
    replicas, so their squared norms are summed over the EP group only.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    device = grads[0].device
    dense = [p.grad for p in params if p.grad is not None and id(p) not in expert_ids]
    expert = [p.grad for p in params if p.grad is not None and id(p) in expert_ids]

    def sq(gs: list[torch.Tensor]) -> torch.Tensor:
        if not gs:
            return torch.zeros((), device=device, dtype=torch.float32)
        return torch.stack([torch.linalg.vector_norm(g.float(), 2) for g in gs]).pow(2).sum()

    expert_sq = sq(expert)
    dist.all_reduce(expert_sq, op=dist.ReduceOp.SUM, group=ep_group)
    total = (sq(dense) + expert_sq).sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype))
    return total
