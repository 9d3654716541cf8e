"""`device_limited`: group-limited routing (DeepSeek-V2 device-limited, DeepSeek-V3 node-limited).

Per token: score every group of experts by the sum of its `group_score_top` best expert scores
(1 = the best expert only, DeepSeek-V2; 2 = DeepSeek-V3), keep the `max_groups` best groups,
then take the top-k experts inside them. With groups = devices, a token's k experts live on at
most `max_groups` devices, so it crosses the network at most that many times.

Groups are the expert placement (`groups: placement`, the run's devices) or `num_groups` equal
blocks of consecutive expert ids (`groups: blocks`, as Megatron-Core and torchtitan implement
it; equal to the devices under the contiguous placement). Optional auxiliary-loss-free balancing
(`bias_update_rate`: a per-expert bias that shifts group and expert *selection*, never the
weights) and `route_scale` (DeepSeek's routed_scaling_factor, multiplying the combine weights).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from moelight.api import (
    ConfigError,
    LayerContext,
    Router,
    Routing,
    StandardRoutingParams,
    finish_routing,
    record_expert_load,
    register_expert_bias,
    router_scores,
    routers,
    update_expert_bias,
)


@routers.register("device_limited")
class DeviceLimitedRouter(Router):
    """Top-k experts within each token's max_groups best expert groups (DeepSeek-V2/V3)."""

    class Params(StandardRoutingParams):
        max_groups: int = Field(
            1, ge=1, description="groups (devices) a token may use: DeepSeek's M / topk_group"
        )
        groups: Literal["placement", "blocks"] = Field(
            "placement", description="placement: the devices of the expert placement; blocks: equal id blocks"
        )
        num_groups: int | None = Field(
            None, ge=1, description="groups: blocks only: how many blocks of consecutive expert ids (n_group)"
        )
        group_score_top: int = Field(
            2,
            ge=1,
            description="a group's score is the sum of its best this-many expert scores (V2: 1, V3: 2)",
        )
        bias_update_rate: float = Field(
            0.0, ge=0, description="aux-loss-free balancing: step of the selection-only expert bias (0 = off)"
        )

        @model_validator(mode="after")
        def _num_groups_only_for_blocks(self):
            if self.groups == "blocks" and self.num_groups is None:
                raise ValueError(
                    "groups: blocks needs num_groups (how many blocks of consecutive expert ids)"
                )
            if self.groups == "placement" and self.num_groups is not None:
                raise ValueError(
                    "num_groups only applies to groups: blocks (placement groups are its devices)"
                )
            return self

    def __init__(self, params: Params, ctx: LayerContext):
        super().__init__(params, ctx)
        e = ctx.num_experts
        # The group table is data, built on the CPU even when the model is built on the meta device.
        with torch.device("cpu"):
            group_of = self._group_of(params, ctx)
            order = group_of.argsort(stable=True)
        num_groups = int(group_of.max()) + 1
        size = e // num_groups
        if params.max_groups > num_groups:
            raise ConfigError(
                "router.max_groups",
                f"max_groups = {params.max_groups} exceeds the {num_groups} expert groups",
            )
        if params.max_groups * size < ctx.top_k:
            raise ConfigError(
                "router.max_groups",
                f"{params.max_groups} group(s) of {size} experts cannot hold top_k = {ctx.top_k} experts",
            )
        if params.group_score_top > size:
            raise ConfigError(
                "router.group_score_top",
                f"group_score_top = {params.group_score_top} exceeds the group size {size}",
            )
        # Derived from the recipe, so not part of the checkpoint. `order` lists the experts group by
        # group, so scores[:, order] reshapes to [T, groups, size].
        self.register_buffer("group_of", group_of, persistent=False)
        self.register_buffer("order", order, persistent=False)
        self.num_groups, self.group_size = num_groups, size
        self.gate = nn.Linear(ctx.hidden_size, e, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)
        if params.bias_update_rate:
            register_expert_bias(self, e)

    @staticmethod
    def _group_of(params: Params, ctx: LayerContext) -> torch.Tensor:
        """Group id per expert [E]: its device, or its block of consecutive ids."""
        e = ctx.num_experts
        if params.groups == "placement":
            return ctx.placement.detach().cpu().long().clone()
        if e % params.num_groups:
            raise ConfigError(
                "router.num_groups", f"num_groups = {params.num_groups} must divide num_experts = {e}"
            )
        return torch.arange(e) // (e // params.num_groups)

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """Expert ids [T, k] for selection scores [T, E] (already biased when balancing)."""
        p, t = self.params, scores.shape[0]
        grouped = scores[:, self.order].view(t, self.num_groups, self.group_size)
        group_scores = grouped.topk(p.group_score_top, dim=-1).values.sum(-1)  # [T, G]
        chosen = group_scores.topk(p.max_groups, dim=-1).indices  # [T, M]
        allowed = (self.group_of.view(1, 1, -1) == chosen.unsqueeze(-1)).any(1)  # [T, E]
        return scores.masked_fill(~allowed, float("-inf")).topk(self.ctx.top_k, dim=-1).indices

    def forward(self, x: torch.Tensor) -> Routing:
        p = self.params
        logits = self.gate(x).float()
        scores = router_scores(logits, p.score)
        selection = scores.detach()
        if p.bias_update_rate:
            selection = selection + self.expert_bias
        experts = self.select(selection)
        if self.training and p.bias_update_rate:
            record_expert_load(self, experts)
        return finish_routing(logits, scores, experts, p)

    def after_optimizer_step(self) -> None:
        if self.params.bias_update_rate:
            update_expert_bias(self, self.params.bias_update_rate)
