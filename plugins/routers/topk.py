"""`topk`: the standard top-k router (Switch / GShard / Mixtral style)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from moelight.api import (
    LayerContext,
    Router,
    Routing,
    StandardRoutingParams,
    finish_routing,
    router_scores,
    routers,
)


@routers.register("topk")
class TopKRouter(Router):
    """Top-k experts by softmax (or sigmoid) score, with load-balancing and z-loss."""

    class Params(StandardRoutingParams):
        jitter: float = Field(
            0.0, ge=0, lt=1, description="training-only multiplicative input noise U[1-j, 1+j] (Switch)"
        )

    def __init__(self, params: Params, ctx: LayerContext):
        super().__init__(params, ctx)
        self.gate = nn.Linear(ctx.hidden_size, ctx.num_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> Routing:
        p = self.params
        if self.training and p.jitter > 0:
            # Switch Transformer's jitter: perturb the router's input, not the experts' input.
            x = x * torch.empty_like(x).uniform_(1.0 - p.jitter, 1.0 + p.jitter)
        logits = self.gate(x).float()
        scores = router_scores(logits, p.score)
        experts = scores.topk(self.ctx.top_k, dim=-1).indices
        return finish_routing(logits, scores, experts, p)
