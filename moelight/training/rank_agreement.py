"""Decisions every rank must take together (stop, skip a step, save and exit)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def any_rank(flags: torch.Tensor) -> torch.Tensor:
    """Element-wise: was the flag raised on any rank? One small all-reduce when distributed.

    Called at the same point of every step on every rank, so the collective lines up.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flags = flags.clone()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags
