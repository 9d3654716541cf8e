"""`check_router`: the router contract, checked on random hidden states in training and eval mode."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from moelight.c2r.collaboration import collaborators_from_counts
from moelight.moe.layer_context import LayerContext
from moelight.moe.routing import Router, Routing
from moelight.registry import routers
from moelight.testing._resolve import plugin_class, plugin_params, require


def default_layer_context(
    hidden_size: int = 32, num_experts: int = 8, top_k: int = 2, devices: int = 4, seed: int = 0
) -> LayerContext:
    """A layer with experts spread evenly over `devices` and random collaborator lists (for C2R-like routers)."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 100, (num_experts, num_experts), generator=gen)
    return LayerContext(
        hidden_size=hidden_size,
        num_experts=num_experts,
        top_k=top_k,
        layer_index=0,
        expert_hidden_size=2 * hidden_size,
        placement=torch.arange(num_experts) // (num_experts // devices),
        collaborators=collaborators_from_counts(counts + counts.T),
        coactivation=(counts + counts.T).float(),
    )


def check_router(
    router: type[Router] | Router | str,
    params: dict[str, Any] | None = None,
    ctx: LayerContext | None = None,
    *,
    tokens: int = 64,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16),
    device: str | torch.device = "cpu",
    seed: int = 0,
    allow_detached_weights: bool = False,
) -> None:
    """Raise AssertionError unless `router` keeps the router contract.

    `router`: a registered name, a `Router` subclass (built with `params` and `ctx`, by default
    `default_layer_context()`), or a built instance (its own ctx; `params` must be None).
    For each dtype (router and input cast to it), in training and eval mode: a `Routing` with
    experts long [T, k] in [0, E) and no expert twice per token, finite float32 weights [T, k],
    finite logits [T, E], aux_losses named finite scalars; in training, a gradient reaches every
    trainable parameter from the weights and aux losses, logged scalars are finite scalars and
    the step hooks run; in eval, two forwards agree and change no buffer.

    The combine weights alone (aux losses off) must carry a gradient to every trainable
    parameter: a router whose weights are detached from its gate trains the gate only through
    its aux losses, which is almost always a bug. `allow_detached_weights=True` accepts such a
    router (one that means it, e.g. a gate trained by a balancing loss alone).
    """
    if isinstance(router, Router):
        require(params is None, "pass params only with a router class or name, not with an instance")
        built = router
    else:
        cls = plugin_class(router, routers, Router)
        built = cls(plugin_params(cls, params), ctx or default_layer_context())
    gen = torch.Generator().manual_seed(seed)
    for dtype in dtypes:
        model = copy.deepcopy(built).to(device, dtype)
        x = torch.randn(tokens, model.ctx.hidden_size, generator=gen).to(device, dtype)
        _check_training(model, x, gen, f"train, {dtype}", allow_detached_weights)
        _check_eval(model, x, f"eval, {dtype}")
        _check_eval(model, x[:1], f"eval, one token, {dtype}")


def check_routing(routing: Routing, tokens: int, ctx: LayerContext, where: str = "") -> None:
    """The shapes, dtypes and values a dispatcher and the trainer rely on."""
    at = f" ({where})" if where else ""
    k, e = ctx.top_k, ctx.num_experts
    require(
        isinstance(routing, Routing), f"forward must return a moelight.api.Routing, got {type(routing)}{at}"
    )
    ids = routing.experts
    require(ids.dtype == torch.long, f"experts must be int64 (long), got {ids.dtype}{at}")
    require(
        tuple(ids.shape) == (tokens, k), f"experts must be [T, k] = {[tokens, k]}, got {list(ids.shape)}{at}"
    )
    require(bool(((ids >= 0) & (ids < e)).all()), f"expert ids must lie in [0, {e}){at}")
    if k > 1:
        same = ids.sort(dim=-1).values.diff(dim=-1) == 0
        require(not bool(same.any()), f"a token chose the same expert twice{at}")
    w = routing.weights
    require(w.dtype == torch.float32, f"weights must be float32, got {w.dtype}{at}")
    require(tuple(w.shape) == (tokens, k), f"weights must be [T, k] = {[tokens, k]}, got {list(w.shape)}{at}")
    require(bool(torch.isfinite(w).all()), f"weights must be finite{at}")
    lg = routing.logits
    require(lg.is_floating_point(), f"logits must be floating point, got {lg.dtype}{at}")
    require(
        tuple(lg.shape) == (tokens, e), f"logits must be [T, E] = {[tokens, e]}, got {list(lg.shape)}{at}"
    )
    require(bool(torch.isfinite(lg).all()), f"logits must be finite{at}")
    require(isinstance(routing.aux_losses, dict), f"aux_losses must be a dict{at}")
    for name, value in routing.aux_losses.items():
        require(isinstance(name, str) and name, f"aux loss names must be non-empty strings, got {name!r}{at}")
        require(
            isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point(),
            f"aux loss {name!r} must be a floating-point scalar tensor{at}",
        )
        require(bool(torch.isfinite(value)), f"aux loss {name!r} is not finite{at}")


def _check_training(
    model: Router, x: torch.Tensor, gen: torch.Generator, where: str, allow_detached_weights: bool
) -> None:
    model.train()
    model.begin_step(7)
    require(model.step == 7, f"begin_step must record the step: call super().begin_step ({where})")
    model.zero_grad(set_to_none=True)
    routing = model(x)
    check_routing(routing, x.shape[0], model.ctx, where)
    probe = torch.randn(routing.weights.shape, generator=gen).to(x.device)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    require(bool(trainable), f"the router has no trainable parameter ({where})")
    if not allow_detached_weights:
        _check_weights_reach_parameters(routing.weights * probe, trainable, where)
    loss = (routing.weights * probe).sum() + sum(routing.aux_losses.values())
    require(
        loss.requires_grad,
        f"neither the weights nor the aux losses depend on the router's parameters ({where})",
    )
    loss.backward()
    missing = [n for n, p in trainable.items() if p.grad is None]
    require(
        not missing, f"no gradient reaches {', '.join(missing)} from the weights and aux losses ({where})"
    )
    for n, p in trainable.items():
        require(bool(torch.isfinite(p.grad).all()), f"the gradient of {n} is not finite ({where})")
    require(
        any(bool(p.grad.abs().sum() > 0) for p in trainable.values()), f"every gradient is zero ({where})"
    )
    for name, value in model.pop_logged().items():
        require(torch.as_tensor(value).numel() == 1, f"logged {name!r} must be a scalar ({where})")
        require(bool(torch.isfinite(torch.as_tensor(value))), f"logged {name!r} is not finite ({where})")
    model.after_optimizer_step()


def _check_weights_reach_parameters(
    weighted: torch.Tensor, trainable: dict[str, torch.nn.Parameter], where: str
) -> None:
    """The language-model loss reaches the router only through the combine weights: each trainable
    parameter must get a gradient from them alone (aux losses off)."""
    if weighted.requires_grad:
        grads = torch.autograd.grad(
            weighted.sum(), list(trainable.values()), allow_unused=True, retain_graph=True
        )
    else:
        grads = [None] * len(trainable)
    detached = [n for n, g in zip(trainable, grads) if g is None]
    require(
        not detached,
        f"the combine weights carry no gradient to {', '.join(detached)} (aux losses off), so the "
        "language-model loss never trains it; compute the weights from the parameters without "
        f"detaching, or pass allow_detached_weights=True if the router means it ({where})",
    )


def _check_eval(model: Router, x: torch.Tensor, where: str) -> None:
    model.eval()
    before = {n: b.clone() for n, b in model.named_buffers()}
    with torch.no_grad():
        first, second = model(x), model(x)
    check_routing(first, x.shape[0], model.ctx, where)
    require(
        torch.equal(first.experts, second.experts), f"two eval forwards chose different experts ({where})"
    )
    require(torch.equal(first.weights, second.weights), f"two eval forwards gave different weights ({where})")
    for n, b in model.named_buffers():
        require(torch.equal(before[n], b), f"an eval forward changed buffer {n!r} ({where})")
