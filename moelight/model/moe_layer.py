"""One MoE FFN: router -> dispatcher over the layer's expert weights (+ optional shared expert)."""

from __future__ import annotations

import torch
from torch import nn

from moelight.moe.dispatch import Dispatcher
from moelight.moe.experts import ExpertWeights
from moelight.moe.layer_context import LayerContext
from moelight.moe.routing import Router, Routing
from moelight.moe.routing_contract import check_routing


class MoELayer(nn.Module):
    def __init__(
        self,
        ctx: LayerContext,
        router: Router,
        experts: ExpertWeights,
        dispatcher: Dispatcher,
        shared_expert: nn.Module | None = None,
        shared_expert_gate: nn.Linear | None = None,
    ):
        super().__init__()
        self.ctx = ctx
        self.router = router
        self.experts = experts
        self.dispatcher = dispatcher
        self.shared_expert = shared_expert
        self.shared_expert_gate = shared_expert_gate
        self.aux_losses: dict[str, torch.Tensor] = {}
        self.last_routing: Routing | None = None  # detached, for metrics and profiling
        self.check_routing_values = True  # the recipe's trainer.check_routing_values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        routing = self.router(flat)
        if self.training:  # a plugin's bad output fails here, naming it, not deep in a dispatcher
            check_routing(routing, flat.shape[0], self.ctx, self.router, self.check_routing_values)
        y = self.experts(self.dispatcher, flat, routing)  # through the experts: see ExpertWeights.forward
        if self.shared_expert is not None:
            shared = self.shared_expert(flat)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(flat)) * shared
            y = y + shared
        self.aux_losses = routing.aux_losses
        self.last_routing = Routing(
            routing.experts.detach(), routing.weights.detach(), routing.logits.detach()
        )
        return y.reshape(shape)
