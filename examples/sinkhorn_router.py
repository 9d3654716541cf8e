"""A worked example of a router plugin: Sinkhorn-balanced top-k routing (BASE layers / S-BASE).

In training, experts are chosen on the router scores rebalanced by a few Sinkhorn iterations,
which push the batch's token-to-expert assignment towards equal load without an auxiliary
loss (Clark et al. 2022, "Unified scaling laws for routed language models"; Megatron-Core's
`sinkhorn` load balancing). The combine weights stay the plain softmax probabilities, and at
evaluation the choice is plain top-k.

Use it from a recipe without installing anything:

    plugins: [examples/sinkhorn_router.py]
    router: {name: sinkhorn, iterations: 8}
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from moelight.api import ConfigError, LayerContext, PluginParams, Router, Routing, routers
from moelight.router_losses import router_scores, standard_routing


def sinkhorn(logits: torch.Tensor, iterations: int) -> torch.Tensor:
    """exp(logits) [T, E] scaled so rows sum to 1/T and columns approach 1/E (equal load)."""
    cost = torch.exp(logits - logits.max())  # a constant shift changes nothing after scaling
    col = torch.ones(cost.shape[1], dtype=cost.dtype, device=cost.device)
    for _ in range(iterations):
        row = (1.0 / cost.shape[0]) / (cost @ col)
        col = (1.0 / cost.shape[1]) / (row @ cost)
    return row[:, None] * cost * col[None, :]


@routers.register("sinkhorn")
class SinkhornRouter(Router):
    """Top-k on Sinkhorn-balanced scores in training, plain top-k at evaluation."""

    class Params(PluginParams):
        iterations: int = Field(8, ge=1, description="Sinkhorn iterations per training forward")
        aux_loss_coef: float = Field(0.0, ge=0, description="load-balancing loss weight")

    def __init__(self, params: Params, ctx: LayerContext):
        super().__init__(params, ctx)
        if ctx.top_k >= ctx.num_experts:
            raise ConfigError(
                "model.top_k",
                f"top_k = {ctx.top_k} leaves nothing to balance among {ctx.num_experts} experts",
            )
        self.gate = nn.Linear(ctx.hidden_size, ctx.num_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> Routing:
        logits = self.gate(x).float()
        scores = router_scores(logits, "softmax")
        choice = sinkhorn(logits.detach(), self.params.iterations) if self.training else scores
        experts = choice.topk(self.ctx.top_k, dim=-1).indices
        return standard_routing(
            logits,
            scores,
            experts,
            score="softmax",
            renormalize=False,
            aux_loss_coef=self.params.aux_loss_coef,
            z_loss_coef=0.0,
        )
