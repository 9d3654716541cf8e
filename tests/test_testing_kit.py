"""`moelight.testing` catches each broken contract it promises to catch (and passes the sound plugins)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from moelight_plugins.dispatchers.sorted import SortedDispatcher
from moelight_plugins.routers.topk import TopKRouter

from moelight.api import Routing
from moelight.testing import check_dispatcher, check_router, naive_moe


def router_that(mutate):
    """The topk router with its Routing passed through `mutate(router, routing)`."""

    class Broken(TopKRouter):
        def forward(self, x):
            return mutate(self, super().forward(x))

    return Broken


def replace(**fields):
    return lambda self, r: dataclasses.replace(r, **{k: f(r) for k, f in fields.items()})


def dup(r):
    e = r.experts.clone()
    e[:, 1] = e[:, 0]
    return e


BROKEN_ROUTERS = {
    "int32 ids": (replace(experts=lambda r: r.experts.int()), "int64"),
    "a repeated expert": (replace(experts=dup), "same expert twice"),
    "ids out of range": (replace(experts=lambda r: r.experts + 8), "lie in"),
    "too few ids": (replace(experts=lambda r: r.experts[:, :1]), "experts must be [T, k]"),
    "bf16 weights": (replace(weights=lambda r: r.weights.bfloat16()), "weights must be float32"),
    "nan weights": (replace(weights=lambda r: r.weights * float("nan")), "weights must be finite"),
    "logits [T, E-1]": (replace(logits=lambda r: r.logits[:, :-1]), "logits must be [T, E]"),
    "a vector aux loss": (replace(aux_losses=lambda r: {"lb": torch.ones(2)}), "scalar"),
    "no gradient path": (
        replace(weights=lambda r: r.weights.detach(), aux_losses=lambda r: {}),
        "the combine weights carry no gradient to gate.weight",
    ),
    "random eval weights": (
        replace(weights=lambda r: r.weights + torch.rand(()).item()),
        "two eval forwards gave different weights",
    ),
    "not a Routing": (lambda self, r: (r.experts, r.weights), "must return a moelight.api.Routing"),
}


@pytest.mark.parametrize("case", BROKEN_ROUTERS)
def test_check_router_rejects(case):
    mutate, message = BROKEN_ROUTERS[case]
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_router(router_that(mutate))


def test_check_router_rejects_no_gradient_path_even_when_detached_weights_are_allowed():
    mutate = replace(weights=lambda r: r.weights.detach(), aux_losses=lambda r: {})
    with pytest.raises(AssertionError, match="neither the weights nor the aux losses"):
        check_router(router_that(mutate), allow_detached_weights=True)


def test_check_router_rejects_an_untrained_parameter_and_a_buffer_changed_in_eval():
    class Unused(TopKRouter):
        def __init__(self, params, ctx):
            super().__init__(params, ctx)
            self.scale = torch.nn.Parameter(torch.ones(()))

    with pytest.raises(AssertionError, match="carry no gradient to scale"):
        check_router(Unused)
    with pytest.raises(AssertionError, match="no gradient reaches scale"):  # nor do the aux losses
        check_router(Unused, allow_detached_weights=True)

    class Counting(TopKRouter):
        def __init__(self, params, ctx):
            super().__init__(params, ctx)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return super().forward(x)

    with pytest.raises(AssertionError, match="changed buffer 'calls'"):
        check_router(Counting)


def test_check_router_validates_params_and_logged_scalars():
    with pytest.raises(Exception, match="top_t"):
        check_router("topk", {"top_t": 3})

    class LogsAVector(TopKRouter):
        def forward(self, x):
            self.log_scalar("load", torch.ones(3))
            return super().forward(x)

    with pytest.raises(AssertionError, match="logged 'load' must be a scalar"):
        check_router(LogsAVector)


def dispatcher_that(forward):
    class Broken(SortedDispatcher):
        def forward(self, x, routing):
            return forward(self, x, routing)

    return Broken


BROKEN_DISPATCHERS = {
    "ignores the weights": (
        lambda self, x, r: SortedDispatcher.forward(
            self, x, Routing(r.experts, torch.ones_like(r.weights), r.logits)
        ),
        "output differs from sorted",
    ),
    "no gradient to the weights": (
        lambda self, x, r: SortedDispatcher.forward(
            self, x, Routing(r.experts, r.weights.detach(), r.logits)
        ),
        "grad weights differs from sorted",
    ),
    "float32 output": (lambda self, x, r: SortedDispatcher.forward(self, x, r).float(), "the input's dtype"),
    "counts nothing": (
        lambda self, x, r: (SortedDispatcher.forward(self, x, r), self.stats.reset())[0],
        "stats.tokens",
    ),
}


@pytest.mark.parametrize("case", BROKEN_DISPATCHERS)
def test_check_dispatcher_rejects(case):
    forward, message = BROKEN_DISPATCHERS[case]
    dtypes = (torch.bfloat16,) if "float32" in case else (torch.float32,)
    with pytest.raises(AssertionError, match=re.escape(message)):
        check_dispatcher(dispatcher_that(forward), dtypes=dtypes, top_ks=(2,))


def test_naive_moe_is_the_definition_for_one_token():
    from moelight.api import ExpertWeights

    experts = ExpertWeights([4, 7], 3, 5, init_std=0.5)  # a rank holding global experts 4 and 7
    x = torch.randn(1, 3)
    y = naive_moe(x, Routing(torch.tensor([[7, 4]]), torch.tensor([[0.25, 0.5]]), torch.zeros(1, 8)), experts)
    with torch.no_grad():
        swiglu = [
            torch.nn.functional.silu(x @ experts.w1[i].T) * (x @ experts.v1[i].T) @ experts.w2[i].T
            for i in (1, 0)
        ]
    torch.testing.assert_close(y, 0.25 * swiglu[0] + 0.5 * swiglu[1])
