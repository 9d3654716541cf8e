"""`check_dispatcher`: a dispatcher equals `sorted`, forward and gradients, on random routings.

`sorted` is the project's correctness reference; so that it is never compared only with itself,
each check first compares `sorted` with `naive_moe`, the per-token definition of an MoE FFN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from moelight.dispatch import Dispatcher
from moelight.experts import ExpertWeights
from moelight.layer_context import LayerContext
from moelight.registry import dispatchers
from moelight.routing import Routing
from moelight.testing._resolve import plugin_class, plugin_params, require

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 3e-2, torch.float16: 1e-2}
D, FFN, E, T = 16, 24, 6, 37
IDLE = 2  # the expert no token of the `idle` routings visits


def naive_moe(x: torch.Tensor, routing: Routing, experts: ExpertWeights) -> torch.Tensor:
    """The definition, per (token, slot) pair: y_t = sum_j w_tj * SwiGLU_{e_tj}(x_t), in float32.

    Each pair gathers its own expert's matrices ([T, k, ffn, d]): no sorting, grouping or scatter.
    """
    local = {g: i for i, g in enumerate(experts.global_ids)}
    idx = torch.tensor([[local[e] for e in row] for row in routing.experts.tolist()], device=x.device)
    w1, v1, w2 = (w.float()[idx] for w in (experts.w1, experts.v1, experts.w2))
    xf = x.float()
    h = F.silu(torch.einsum("tkfd,td->tkf", w1, xf)) * torch.einsum("tkfd,td->tkf", v1, xf)
    out = torch.einsum("tkdf,tkf->tkd", w2, h)
    return (routing.weights.unsqueeze(-1) * out).sum(1).to(x.dtype)


def random_routing(gen: torch.Generator, tokens: int, k: int, allowed: torch.Tensor) -> torch.Tensor:
    """k distinct experts per token, uniformly among `allowed`."""
    return allowed[torch.rand(tokens, len(allowed), generator=gen).topk(k, dim=1).indices]


def routings(gen: torch.Generator, k: int) -> dict[str, torch.Tensor]:
    """Expert ids [T, k] for each case: uniform, one idle expert, and every token on the same k experts."""
    everyone = torch.arange(E)
    return {
        "uniform": random_routing(gen, T, k, everyone),
        "idle expert": random_routing(gen, T, k, everyone[everyone != IDLE]),
        "one hot group": random_routing(gen, 1, k, everyone).expand(T, k).clone(),
    }


def check_dispatcher(
    dispatcher: type[Dispatcher] | str,
    params: dict[str, Any] | None = None,
    *,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16),
    top_ks: Sequence[int] = (1, 3),
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> None:
    """Raise AssertionError unless the dispatcher equals `sorted` on one device.

    For every dtype, top-k and routing case (uniform, an idle expert, all tokens on the same k
    experts), with random inputs and expert weights: the output [T, d] in the input's dtype, and
    the gradients of x, the combine weights and w1, v1, w2, within the dtype's tolerance; the idle
    expert's gradient is exactly zero; `stats.tokens` counts the tokens. Expert parallelism
    (several processes) is outside this check: see tests/test_grouplocal_dispatch.py.
    """
    cls = plugin_class(dispatcher, dispatchers, Dispatcher)
    reason = cls.unavailable_reason() if hasattr(cls, "unavailable_reason") else None
    require(reason is None, f"{cls.__qualname__} cannot run here: {reason}")
    reference = dispatchers.get("sorted")
    gen = torch.Generator().manual_seed(seed)
    for dtype in dtypes:
        _check_reference(reference, gen, dtype, device)
        tol = TOLERANCE[dtype]
        for k in top_ks:
            for case, ids in routings(gen, k).items():
                where = f"{case}, top_k={k}, {dtype}"
                ctx, experts = _layer(gen, k, dtype, device)
                x = torch.randn(T, D, generator=gen).to(device, dtype)
                routing = Routing(
                    ids.to(device),
                    torch.rand(T, k, generator=gen).to(device),
                    torch.zeros(T, E, device=device),
                )
                grad_out = torch.randn(T, D, generator=gen).to(device, dtype)
                built = cls(plugin_params(cls, params), ctx, experts)
                want = _run(reference(reference.Params(), ctx, experts), x, routing, experts, grad_out)
                got = _run(built, x, routing, experts, grad_out)
                require(
                    got[0].dtype == dtype,
                    f"the output must have the input's dtype {dtype}, got {got[0].dtype}",
                )
                require(
                    got[0].shape == x.shape,
                    f"the output must be [T, d] {list(x.shape)}, got {list(got[0].shape)}",
                )
                for name, g, w in zip(
                    ("output", "grad x", "grad weights", "grad w1", "grad v1", "grad w2"), got, want
                ):
                    _close(g, w, tol, f"{name} differs from sorted ({where})")
                if case == "idle expert":
                    require(
                        bool((got[3][IDLE] == 0).all()),
                        f"the idle expert's w1 gradient is not zero ({where})",
                    )
                require(
                    built.stats.tokens == T,
                    f"stats.tokens must count the {T} tokens, got {built.stats.tokens} ({where})",
                )


def _layer(gen: torch.Generator, k: int, dtype: torch.dtype, device) -> tuple[LayerContext, ExpertWeights]:
    ctx = LayerContext(hidden_size=D, num_experts=E, top_k=k, layer_index=0, ffn_hidden_size=FFN)
    experts = ExpertWeights(list(range(E)), D, FFN)
    with torch.no_grad():
        for p in experts.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return ctx, experts.to(device, dtype)


def _run(
    run: Callable[[torch.Tensor, Routing], torch.Tensor],
    x: torch.Tensor,
    routing: Routing,
    experts: ExpertWeights,
    grad_out: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The output and the gradients of (x, weights, w1, v1, w2) for the upstream gradient `grad_out`."""
    xx = x.clone().requires_grad_()
    ww = routing.weights.clone().requires_grad_()
    y = run(xx, Routing(routing.experts, ww, routing.logits))
    grads = torch.autograd.grad(y, [xx, ww, experts.w1, experts.v1, experts.w2], grad_out, allow_unused=True)
    return (
        y.detach(),
        *(torch.zeros_like(t) if g is None else g for g, t in zip(grads, [xx, ww, *experts.parameters()])),
    )


def _check_reference(reference: type[Dispatcher], gen: torch.Generator, dtype: torch.dtype, device) -> None:
    """`sorted` equals the per-token definition (top-2, an idle expert)."""
    ctx, experts = _layer(gen, 2, dtype, device)
    ids = routings(gen, 2)["idle expert"].to(device)
    routing = Routing(ids, torch.rand(T, 2, generator=gen).to(device), torch.zeros(T, E, device=device))
    x = torch.randn(T, D, generator=gen).to(device, dtype)
    grad_out = torch.randn(T, D, generator=gen).to(device, dtype)
    want = _run(lambda xx, r: naive_moe(xx, r, experts), x, routing, experts, grad_out)
    got = _run(reference(reference.Params(), ctx, experts), x, routing, experts, grad_out)
    for g, w in zip(got, want):
        _close(
            g, w, TOLERANCE[dtype], f"the reference `sorted` differs from the per-token definition ({dtype})"
        )


def _close(got: torch.Tensor, want: torch.Tensor, tol: float, message: str) -> None:
    """Within `tol` relative to each element and to the tensor's largest entry (low-precision sums)."""
    scale = float(want.float().abs().max()) if want.numel() else 0.0
    try:
        torch.testing.assert_close(got.float(), want.float(), atol=tol * max(scale, 1.0), rtol=tol)
    except AssertionError as err:
        raise AssertionError(f"{message}: {err}") from None
