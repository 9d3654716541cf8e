"""Auxiliary-loss-free load balancing (DeepSeek-V3): a per-expert bias for selection only.

A router adds `expert_bias` to its scores when it *chooses* experts, never when it computes the
combine weights, and after every training forward nudges the bias of each expert by
`rate * sign(mean_load - load_e)`: underloaded experts become easier to pick, overloaded ones
harder. The bias is a buffer (learned by this rule, not by gradients) saved with checkpoints.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from moelight.router_losses import expert_counts

BUFFER = "expert_bias"


def register_expert_bias(router: nn.Module, num_experts: int) -> None:
    """Give `router` a zero float32 buffer `expert_bias` [E] (persistent: resumed runs keep it)."""
    router.register_buffer(BUFFER, torch.zeros(num_experts, dtype=torch.float32))


@torch.no_grad()
def update_expert_bias(bias: torch.Tensor, experts: torch.Tensor, rate: float) -> None:
    """Raise the bias of underloaded experts and lower it for overloaded ones, in place.

    `experts`: [T, k] chosen ids of this forward. With torch.distributed initialised the counts
    are summed over all ranks first, so every data-parallel replica applies the same update.
    """
    load = expert_counts(experts, bias.numel()).to(bias.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(load)
    bias.add_(rate * torch.sign(load.mean() - load))
