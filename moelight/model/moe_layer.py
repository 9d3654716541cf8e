"""One MoE FFN: router -> dispatcher over the layer's expert weights (+ optional shared expert)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from moelight.moe.dispatch import Dispatcher
from moelight.moe.experts import ExpertWeights
from moelight.moe.layer_context import LayerContext
from moelight.moe.recompute import recomputing
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
        if not recomputing():
            return self._forward(x)
        # Activation checkpointing runs this forward again in backward: what it records (the
        # dispatcher's counters, the aux losses and routing kept for the step's metrics) must
        # stay as the first run left it. Routers skip their own recording (record_expert_load).
        stats = copy.copy(self.dispatcher.stats)
        aux, last = self.aux_losses, self.last_routing
        try:
            return self._forward(x)
        finally:  # also when checkpoint stops the recompute early
            self.dispatcher.stats, self.aux_losses, self.last_routing = stats, aux, last

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        routing = self.router(flat)
        # a plugin's bad output fails here, naming it, not deep in a dispatcher (its type always;
        # its values once per step: not again when checkpointing recomputes the forward)
        if (self.training and not recomputing()) or not isinstance(routing, Routing):
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
