"""Check a router's output against the Routing contract (moelight/moe/routing.py) before dispatch.

Shapes and dtypes are metadata: checked for free on every call. Values (expert ids in range,
finite weights, no expert twice for one token) are checked with a few vectorised reductions
and read back with ONE host sync per router call; `trainer.check_routing_values=false` turns
them off for speed (benchmarks/routing_check_cost.py measures what they cost).
"""

from __future__ import annotations

import torch

from moelight.errors import MoelightError
from moelight.moe.layer_context import LayerContext
from moelight.moe.routing import Routing


class RoutingContractError(MoelightError):
    """A router plugin returned something the Routing contract does not allow."""


def _shape(t: object) -> str:
    if not torch.is_tensor(t):
        return type(t).__name__
    return f"{t.dtype} {list(t.shape)}".replace("torch.", "")


def contract_problems(routing: Routing, tokens: int, ctx: LayerContext, values: bool = True) -> list[str]:
    """What is wrong with `routing` for `tokens` tokens (empty when it keeps the contract)."""
    if not isinstance(routing, Routing):
        return [f"forward must return a Routing, got {type(routing).__name__}"]
    k, e = ctx.top_k, ctx.num_experts
    experts, weights, logits = routing.experts, routing.weights, routing.logits
    if not all(torch.is_tensor(t) for t in (experts, weights, logits)):
        return [
            f"experts/weights/logits must be tensors, got {_shape(experts)}, {_shape(weights)}, {_shape(logits)}"
        ]
    problems = []
    if tuple(experts.shape) != (tokens, k) or experts.dtype != torch.long:
        problems.append(f"experts must be int64 [{tokens}, {k}], got {_shape(experts)}")
    if tuple(weights.shape) != (tokens, k) or not weights.is_floating_point():
        problems.append(f"weights must be float [{tokens}, {k}], got {_shape(weights)}")
    if tuple(logits.shape) != (tokens, e):
        problems.append(f"logits must be [{tokens}, {e}], got {_shape(logits)}")
    if problems or not values or tokens == 0:
        return problems
    ids = experts.detach()
    ordered = ids.sort(dim=-1).values
    flags = torch.stack(
        [
            (ids.min() < 0) | (ids.max() >= e),
            ~torch.isfinite(weights.detach()).all(),
            (ordered[:, 1:] == ordered[:, :-1]).any() if k > 1 else torch.zeros((), dtype=torch.bool),
        ]
    )
    out_of_range, nonfinite, duplicate = flags.tolist()  # the one host sync
    if out_of_range:
        problems.append(f"expert ids must be in [0, {e}), got min {int(ids.min())} max {int(ids.max())}")
    if nonfinite:
        bad = (~torch.isfinite(weights.detach())).sum()
        problems.append(f"weights must be finite, got {int(bad)} non-finite of {weights.numel()}")
    if duplicate:
        token = int((ordered[:, 1:] == ordered[:, :-1]).any(-1).nonzero()[0])
        problems.append(
            f"a token must not visit an expert twice, got {ids[token].tolist()} for token {token}"
        )
    return problems


def check_routing(
    routing: Routing, tokens: int, ctx: LayerContext, router: object, values: bool = True
) -> None:
    """Raise RoutingContractError naming the router plugin and what it returned."""
    problems = contract_problems(routing, tokens, ctx, values)
    if problems:
        name = getattr(router, "plugin_name", type(router).__name__)
        raise RoutingContractError(
            f"router {name!r} ({type(router).__name__}) broke the Routing contract in layer "
            f"{ctx.layer_index}: " + "; ".join(problems)
        )
