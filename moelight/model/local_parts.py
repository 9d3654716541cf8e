"""Which part of each stored tensor this rank's parameter holds.

Three layouts compose:
- a plain tensor holds the whole stored tensor;
- an expert tensor (`ExpertWeights.w1/v1/w2`) holds the rows of its experts, by global id, of
  the stored `[E, ...]` tensor (the placement chose them);
- an FSDP2 / DTensor parameter holds, of that (possibly expert-selected) tensor, the chunk its
  mesh coordinate names under `Shard(d)` placements (torch.chunk's rule: ceil-sized chunks, the
  last ones shorter or empty), and all of it under `Replicate()`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from moelight.errors import MoelightError
from moelight.model.weight_sources import Index


def is_dtensor(t: torch.Tensor) -> bool:
    """Whether `t` is a DTensor. Only a loaded torch.distributed.tensor makes DTensors, and
    importing it takes seconds, so single-process loading never does."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def chunk_range(start: int, length: int, parts: int, which: int) -> tuple[int, int]:
    """(start, length) of chunk `which` of `parts` of [start, start + length), as torch.chunk splits."""
    size = -(-length // parts)  # ceil
    lo = min(which * size, length)
    return start + lo, min(size, length - lo)


def dtensor_region(t: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) per dim of this rank's local chunk of DTensor `t`, in `t`'s global
    coordinates. Shards on the same dim nest in mesh-dim order, as DTensor lays them out by default."""
    from torch.distributed.tensor import Replicate, Shard

    region = [(0, n) for n in t.shape]
    coordinate = t.device_mesh.get_coordinate()
    if coordinate is None:  # this rank is not in the mesh: it holds nothing
        return [(0, 0) for _ in t.shape]
    for mesh_dim, placement in enumerate(t.placements):
        if type(placement) is Shard:
            start, length = region[placement.dim]
            region[placement.dim] = chunk_range(
                start, length, t.device_mesh.size(mesh_dim), coordinate[mesh_dim]
            )
        elif not isinstance(placement, Replicate):
            raise MoelightError(
                f"model.init_from: cannot load a parameter placed as {placement} "
                "(supported: Shard(dim) and Replicate())"
            )
    return region


def local_index(param: torch.Tensor, rows: Sequence[int] | None) -> Index:
    """The part of the stored tensor that `param` holds.

    `rows`: the stored rows that make up `param`'s dim 0 (its experts' global ids), or None when
    `param` is the whole stored tensor (or its DTensor-global view)."""
    if is_dtensor(param):
        region = dtensor_region(param)
    else:
        region = [(0, n) for n in param.shape]
    index: list = [slice(start, start + length) for start, length in region]
    if rows is not None and index:
        index[0] = list(rows)[index[0]]
    return tuple(index)
