"""`check_router` fails a router whose combine weights carry no gradient to its parameters (the
gate then trains only through its aux losses), unless `allow_detached_weights=True`; the bundled
routers still pass."""

from __future__ import annotations

import pytest
import torch

from moelight.api import Router, Routing
from moelight.registry import routers
from moelight.testing import check_router
from moelight.testing.router_checks import default_layer_context


class DetachedTopK(Router):
    """Top-k softmax whose weights are detached from the gate; a load-balancing loss keeps the gate
    trainable, so a check on "weights and aux losses together" would let it through."""

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.gate = torch.nn.Linear(ctx.hidden_size, ctx.num_experts, bias=False)

    def forward(self, x: torch.Tensor) -> Routing:
        logits = self.gate(x).float()
        probs = logits.softmax(-1)
        weights, experts = probs.detach().topk(self.ctx.top_k, dim=-1)  # the bug: detached
        aux = {"balance": probs.mean(0).pow(2).sum() * self.ctx.num_experts * 0.01}
        return Routing(experts=experts, weights=weights, logits=logits, aux_losses=aux)


def test_detached_weights_fail():
    with pytest.raises(AssertionError, match=r"combine weights carry no gradient to gate\.weight"):
        check_router(DetachedTopK)


def test_detached_weights_pass_when_allowed():
    check_router(DetachedTopK, allow_detached_weights=True)


def test_a_partly_detached_router_names_the_parameter():
    class TwoGates(DetachedTopK):
        def __init__(self, params, ctx):
            super().__init__(params, ctx)
            self.scale = torch.nn.Parameter(torch.ones(ctx.num_experts))

        def forward(self, x):
            r = super().forward(x)
            w = r.weights * self.scale[r.experts]  # scale is reached, gate is not
            return Routing(experts=r.experts, weights=w, logits=r.logits, aux_losses=r.aux_losses)

    with pytest.raises(AssertionError, match=r"no gradient to gate\.weight \(aux"):
        check_router(TwoGates)


REQUIRED = {"c2r": {"top_t": 3}}  # parameters without a default


@pytest.mark.parametrize("name", routers.names())
def test_bundled_routers_pass(name):
    check_router(name, REQUIRED.get(name), ctx=default_layer_context())
