# examples/sinkhorn_router.py
"""A router plugin written from CONTRIBUTING.md: balanced assignment by Sinkhorn (S-BASE).

In training, each token's k experts are the top k of Sinkhorn-balanced scores, which give every
expert about the same share of the batch (Clark et al. 2022, "Unified scaling laws for routed
language models"); in eval, plain top-k. The combine weights are the router probabilities of the
chosen experts, so the gate trains exactly as a top-k gate does.

    plugins: [examples/sinkhorn_router.py]
    router: {name: sinkhorn, iterations: 3}
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from moelight.api import (
    LayerContext,
    Router,
    Routing,
    StandardRoutingParams,
    expert_counts,
    finish_routing,
    router_scores,
    routers,
)


def sinkhorn(logits: torch.Tensor, iterations: int) -> torch.Tensor:
    """Log-scores [T, E] whose columns (experts) and rows (tokens) are alternately normalised."""
    log_p = logits.float()
    for _ in range(iterations):
        log_p = log_p - log_p.logsumexp(dim=0, keepdim=True)  # every expert: the same total mass
        log_p = log_p - log_p.logsumexp(dim=1, keepdim=True)  # every token: a distribution
    return log_p


@routers.register("sinkhorn")
class SinkhornRouter(Router):
    """Top-k on Sinkhorn-balanced scores in training (plain top-k in eval); weights are router probabilities."""

    class Params(StandardRoutingParams):
        iterations: int = Field(3, ge=1, description="Sinkhorn rounds before the training-time choice")

    def __init__(self, params: Params, ctx: LayerContext):
        super().__init__(params, ctx)
        self.gate = nn.Linear(ctx.hidden_size, ctx.num_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> Routing:
        p, k = self.params, self.ctx.top_k
        logits = self.gate(x).float()
        scores = router_scores(logits, p.score)
        if self.training:
            experts = sinkhorn(logits.detach(), p.iterations).topk(k, dim=-1).indices
            load = expert_counts(experts, self.ctx.num_experts)
            self.log_scalar("max_load_over_mean", load.max() / load.mean())
        else:
            experts = scores.topk(k, dim=-1).indices
        return finish_routing(logits, scores, experts, p)
