"""`moelight bench layer`: one MoE layer (router + dispatcher), forward + backward, per candidate.

Every candidate runs on the same router, the same expert weights (one `ExpertWeights` shared by
all) and the same input, so the routings are identical; before timing, each candidate's output
is compared with the reference (`sorted`) to show that the numbers time correct MoE layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from moelight.bench.candidates import Candidate, parse_router, resolve_baseline, resolve_device
from moelight.bench.presets import LayerShape
from moelight.bench.reference import GEMM_ONLY, HF_LOOP, HFLoopDispatcher, sort_rows
from moelight.bench.timing import interleaved, paired_results
from moelight.model.moe_layer import MoELayer
from moelight.moe.dispatch import ExpertParallelContext
from moelight.moe.experts import ExpertWeights
from moelight.moe.layer_context import LayerContext
from moelight.registry import dispatchers, routers

REFERENCE = "sorted"


def build_layers(
    shape: LayerShape, candidates: list[Candidate], router_spec: str, device: torch.device, seed: int
) -> tuple[dict[str, torch.nn.Module], LayerContext, ExpertWeights, torch.nn.Module]:
    """One MoELayer per candidate, all sharing one router and one set of expert weights."""
    torch.manual_seed(seed)
    dtype = shape.torch_dtype
    ctx = LayerContext(
        hidden_size=shape.hidden,
        num_experts=shape.experts,
        top_k=shape.top_k,
        layer_index=0,
        expert_hidden_size=shape.ffn,
    )
    router = routers.build(parse_router(router_spec).spec, ctx, field="router").to(device, dtype)
    experts = ExpertWeights(list(range(shape.experts)), shape.hidden, shape.ffn).to(device, dtype)
    layers: dict[str, torch.nn.Module] = {}
    for c in candidates:
        if c.name == GEMM_ONLY:
            continue
        if c.name == HF_LOOP:
            disp = HFLoopDispatcher(ctx, experts)
        else:
            disp = dispatchers.build(c.spec, ctx, experts, ExpertParallelContext(), field="dispatcher")
        layers[c.label] = MoELayer(ctx, router, experts, disp.to(device))
    return layers, ctx, experts, router


def _relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.float().abs().max().clamp_min(1e-30)
    return float((y.float() - ref.float()).abs().max() / scale)


def bench_layer(
    shape: LayerShape,
    candidates: list[Candidate],
    baseline: str | None = None,
    *,
    router: str = "topk",
    repeats: int = 20,
    warmup: int = 3,
    device: str = "auto",
    seed: int = 0,
    check: bool = True,
) -> dict[str, Any]:
    """Time forward+backward of each candidate, interleaved; returns the JSON-able result."""
    dev = resolve_device(device)
    labels, baseline = resolve_baseline(candidates, baseline)
    layers, ctx, experts, router_mod = build_layers(shape, candidates, router, dev, seed)
    dtype = shape.torch_dtype
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    x = torch.randn(shape.tokens, shape.hidden, generator=gen).to(dev, dtype).requires_grad_()
    grad_out = torch.randn(shape.tokens, shape.hidden, generator=gen).to(dev, dtype)
    params = list(experts.parameters()) + list(router_mod.parameters())

    fns: dict[str, Callable[[], object]] = {}
    for label, layer in layers.items():
        fns[label] = lambda layer=layer: layer(x).backward(grad_out)
    if GEMM_ONLY in labels:
        with torch.no_grad():
            routing = router_mod(x)
            xs, counts = sort_rows(x.detach(), routing.experts, shape.experts)
        xs.requires_grad_()
        gs = torch.randn(xs.shape, generator=gen).to(dev, dtype)
        fns[GEMM_ONLY] = lambda: experts.grouped(xs, counts).backward(gs)
    fns = {label: fns[label] for label in labels}

    def clear(_: str) -> None:
        x.grad = None
        if GEMM_ONLY in fns:
            xs.grad = None
        for p in params:
            p.grad = None

    errors: dict[str, float | None] = {label: None for label in labels}
    reference = REFERENCE if REFERENCE in layers else (baseline if baseline in layers else None)
    if check and reference is not None:
        with torch.no_grad():
            ref = layers[reference](x)
            for label, layer in layers.items():
                errors[label] = _relative_error(layer(x), ref)

    times = interleaved(fns, repeats=repeats, warmup=warmup, device=dev, before=clear)
    errs = {label: {"max_rel_err": err} for label, err in errors.items()}
    results = paired_results(times, labels, baseline, shape.tokens, errs)
    return {
        "kind": "layer",
        "shape": shape.as_dict(),
        "router": router,
        "baseline": baseline,
        "reference": reference,
        "repeats": repeats,
        "warmup": warmup,
        "seed": seed,
        "device": str(dev),
        "results": results,
    }
