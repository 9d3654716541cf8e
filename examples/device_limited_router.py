"""A worked example of a router plugin: device-limited top-k routing (DeepSeek-V2, section 2.1.2).

Each token may use experts on at most `max_devices` devices: rank devices by the best expert
score they hold, keep the top `max_devices`, then take the top-k experts among those. It bounds
the all2all fan-out per token the way C2R does, but without a collaboration profile.

Use it from a recipe without installing anything:

    plugins: [examples/device_limited_router.py]
    router: {name: device_limited, max_devices: 1}
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from moelight.api import ConfigError, LayerContext, PluginParams, Router, Routing, routers
from moelight.router_losses import router_scores, standard_routing


@routers.register("device_limited")
class DeviceLimitedRouter(Router):
    class Params(PluginParams):
        max_devices: int = Field(1, ge=1, description="devices a token may visit")
        aux_loss_coef: float = Field(0.01, ge=0, description="load-balancing loss weight")

    def __init__(self, params: Params, ctx: LayerContext):
        super().__init__(params, ctx)
        per_device = ctx.num_experts // ctx.num_devices
        if params.max_devices * per_device < ctx.top_k:
            raise ConfigError(
                "router.max_devices",
                f"{params.max_devices} device(s) x {per_device} experts cannot hold top_k={ctx.top_k} experts",
            )
        self.gate = nn.Linear(ctx.hidden_size, ctx.num_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)
        # A buffer, so it follows the module to the right device.
        self.register_buffer("placement", ctx.placement.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> Routing:
        logits = self.gate(x).float()
        scores = router_scores(logits, "softmax")
        n_dev = self.ctx.num_devices
        # Best score per device [T, P], then the devices each token may use.
        best = torch.full((x.shape[0], n_dev), float("-inf"), device=x.device)
        best = best.scatter_reduce(1, self.placement.expand_as(scores), scores, reduce="amax")
        allowed_devices = best.topk(min(self.params.max_devices, n_dev), dim=-1).indices
        allowed = (self.placement.view(1, 1, -1) == allowed_devices.unsqueeze(-1)).any(1)
        experts = scores.masked_fill(~allowed, -1.0).topk(self.ctx.top_k, dim=-1).indices
        return standard_routing(
            logits,
            scores,
            experts,
            score="softmax",
            renormalize=False,
            aux_loss_coef=self.params.aux_loss_coef,
            z_loss_coef=0.0,
        )
