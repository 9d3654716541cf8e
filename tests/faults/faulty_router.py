"""`faulty`: a top-k router that breaks the Routing contract on purpose, for the reliability tests.

Loaded by a recipe's `plugins: [tests/faults/faulty_router.py]`. From its `from_call`-th to its
`until_call`-th training call, the router of MoE layer `layer` returns what `fault` names; before that it routes like a
plain softmax top-k router.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from moelight.api import LayerContext, PluginParams, Router, Routing, routers


@routers.register("faulty")
class FaultyRouter(Router):
    class Params(PluginParams):
        fault: Literal[
            "none",
            "nan_weights",
            "inf_logits",
            "wide",
            "duplicate",
            "out_of_range",
            "int32",
            "short_logits",
            "tuple",
            "none_returned",
        ] = Field("none", description="what the router returns instead of a valid Routing")
        from_call: int = Field(1, ge=1, description="the first training call that misbehaves")
        until_call: int | None = Field(None, ge=1, description="the last one (None: every later call)")
        layer: int = Field(0, ge=0, description="the model layer whose router misbehaves")
        delay_s: float = Field(
            0.0, ge=0, description="sleep per training call: slows steps down for signal tests"
        )

    def __init__(self, params: Params, ctx: LayerContext):
        super().__init__(params, ctx)
        self.gate = nn.Linear(ctx.hidden_size, ctx.num_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> Routing:
        logits = self.gate(x).float()
        weights, experts = torch.softmax(logits, -1).topk(self.ctx.top_k, dim=-1)
        if self.training:
            self.calls += 1
            time.sleep(self.params.delay_s)
        p = self.params
        misbehaves = p.from_call <= self.calls <= (p.until_call or self.calls)
        if not self.training or not misbehaves or self.ctx.layer_index != p.layer:
            return Routing(experts, weights, logits)
        e = self.ctx.num_experts
        if p.fault == "nan_weights":
            weights = weights * torch.tensor(float("nan"))
        elif p.fault == "inf_logits":
            logits = logits + torch.tensor(float("inf"))
        elif p.fault == "wide":
            experts = torch.cat([experts, (experts[:, :1] + 1) % e], 1)
            weights = torch.cat([weights, weights[:, :1]], 1)
        elif p.fault == "duplicate":
            experts = experts.clone()
            experts[:, 1] = experts[:, 0]
        elif p.fault == "out_of_range":
            experts = experts.clone()
            experts[0, 0] = e
        elif p.fault == "int32":
            experts = experts.int()
        elif p.fault == "short_logits":
            logits = logits[:, :-1]
        elif p.fault == "tuple":
            return experts, weights, logits  # not a Routing
        elif p.fault == "none_returned":
            return None
        return Routing(experts, weights, logits)
