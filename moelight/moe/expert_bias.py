"""Auxiliary-loss-free load balancing (DeepSeek-V3): a per-expert bias for selection only.

A router adds `expert_bias` to its scores when it *chooses* experts, never when it computes the
combine weights. Its training forwards add the chosen experts to `expert_load`; once per
optimizer step (the Router hook `after_optimizer_step`) the bias of each expert moves by
`rate * sign(mean_load - load_e)` over that step's load, summed over its micro-batches and over
all ranks: underloaded experts become easier to pick, overloaded ones harder. The bias is a
buffer (learned by this rule, not by gradients) saved with checkpoints; the load is not.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from moelight.moe.recompute import recomputing
from moelight.moe.router_losses import expert_counts

BUFFER = "expert_bias"
LOAD = "expert_load"


def register_expert_bias(router: nn.Module, num_experts: int) -> None:
    """Give `router` a zero float32 buffer `expert_bias` [E] (persistent: resumed runs keep it)
    and the step's load `expert_load` [E] (not saved: checkpoints fall between steps)."""
    router.register_buffer(BUFFER, torch.zeros(num_experts, dtype=torch.float32))
    router.register_buffer(LOAD, torch.zeros(num_experts, dtype=torch.float32), persistent=False)
    router._expert_load_step = None


@torch.no_grad()
def record_expert_load(router: nn.Module, experts: torch.Tensor) -> None:
    """Add this training forward's chosen experts [T, k] to the step's load.

    The load is tagged with `router.step` (set by `Router.begin_step`): load left by a step that
    ended without `after_optimizer_step` is dropped when a forward of another step number records.
    The second run of a checkpointed forward (activation checkpointing) records nothing.
    """
    if recomputing():
        return
    load = getattr(router, LOAD)
    step = getattr(router, "step", None)
    if router._expert_load_step != step:
        load.zero_()
        router._expert_load_step = step
    load.add_(expert_counts(experts, load.numel()).to(load.device))


@torch.no_grad()
def update_expert_bias(router: nn.Module, rate: float) -> None:
    """Apply one step's bias update from the recorded load, in place, and clear the load.

    Call from `after_optimizer_step`. With torch.distributed initialised the load is summed over
    all ranks first, so every data-parallel and expert-parallel replica applies the same update.
    """
    bias, load = getattr(router, BUFFER), getattr(router, LOAD)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(load)
    bias.add_(rate * torch.sign(load.mean() - load))  # no load this step: sign(0) leaves it
    load.zero_()
    router._expert_load_step = None


@torch.no_grad()
def discard_expert_load(router: nn.Module) -> None:
    """Forget the load recorded since the last update (a dropped step); no-op without a bias."""
    load = getattr(router, LOAD, None)
    if load is not None:
        load.zero_()
        router._expert_load_step = None
