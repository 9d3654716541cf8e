"""The FSDP path's side of sharded checkpoints (the format itself: checkpoint.py).

Saving: dense tensors go to DCP as DTensors (each rank writes its shard). An expert parameter is
a DTensor over the ranks holding the same experts, sharded on dim 0, the expert dimension, so
each rank's shard is whole experts: it writes those rows under their global expert ids.
Loading: the checkpoint dict checkpoint.py builds for this rank (its experts, dense tensors in
full) is cut to this rank's shards (`distribute_tensor` with no communication: every rank
already has the full tensor) and copied into the model and the optimizer. So a checkpoint saved
at any N, P, with or without FSDP, resumes here, and this path's checkpoints resume on the others.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from moelight.moe.experts import named_expert_parameters
from moelight.parallel.checkpoint import optimizer_param_names


def shard_rows(n: int, shard: int, num_shards: int) -> range:
    """Rows of a dim-0 `Shard` held by `shard` of `num_shards` (torch.chunk's split, as DTensor uses)."""
    size = -(-n // num_shards) if n else 0
    start = min(shard * size, n)
    return range(start, min(start + size, n))


def local_expert_layout(module: nn.Module) -> dict[str, list[int]]:
    """State-dict name of every expert parameter -> global ids of the rows in this rank's shard."""
    layout = {}
    for name, p, owner in named_expert_parameters(module):
        ids = list(owner.global_ids)
        if isinstance(p, DTensor):
            (mesh_dim,) = range(p.device_mesh.ndim)  # experts are sharded on a 1-D mesh
            rows = shard_rows(len(ids), p.device_mesh.get_local_rank(mesh_dim), p.device_mesh.size(mesh_dim))
            assert p.to_local().shape[0] == len(rows), (name, p.to_local().shape, rows)
            ids = [ids[i] for i in rows]
        layout[name] = ids
    return layout


def _local(value: Any, expert: bool) -> Any:
    return value.to_local() if expert and isinstance(value, DTensor) else value


def localize_experts(checkpoint: dict[str, Any], module: nn.Module, optimizers: list) -> dict[str, Any]:
    """Lightning's checkpoint dict with each expert DTensor replaced by its local rows."""
    experts = {name for name, _, _ in named_expert_parameters(module)}
    out = dict(checkpoint)
    out["state_dict"] = {k: _local(v, k in experts) for k, v in checkpoint["state_dict"].items()}
    if "optimizer_states" in checkpoint:
        states = []
        for opt, state in zip(optimizers, checkpoint["optimizer_states"]):
            names = [n for group in optimizer_param_names(opt, module) for n in group]
            states.append(
                {
                    "state": {
                        pid: {e: _local(v, names[pid] in experts) for e, v in entries.items()}
                        for pid, entries in state["state"].items()
                    },
                    "param_groups": state["param_groups"],
                }
            )
        out["optimizer_states"] = states
    return out


def _shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` as `like` holds it: this rank's DTensor shard, or the plain tensor."""
    if isinstance(like, DTensor) and full.shape == like.shape:
        full = full.to(device=like.device, dtype=like.dtype)
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)
    return full


@torch.no_grad()
def load_into_sharded(checkpoint: dict[str, Any], module: nn.Module, optimizers: list) -> None:
    """Copy a checkpoint dict holding this rank's full tensors into the sharded model and optimizers."""
    current = module.state_dict()
    module.load_state_dict(
        {k: _shard_like(v, current[k]) for k, v in checkpoint["state_dict"].items()}, strict=True
    )
    for opt, state in zip(optimizers, checkpoint.get("optimizer_states", [])):
        params = [p for group in opt.param_groups for p in group["params"]]
        sharded = {
            pid: {
                e: _shard_like(v, params[pid]) if isinstance(v, torch.Tensor) else v
                for e, v in entries.items()
            }
            for pid, entries in state["state"].items()
        }
        opt.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})
