"""Per-layer routing metrics computed from the last forward's routing (logged, never backpropagated)."""

from __future__ import annotations

import torch

from moelight.c2r.collaboration import coactivation_counts, concentration
from moelight.model.moe_layer import MoELayer


@torch.no_grad()
def routing_metrics(layers: list[MoELayer]) -> dict[str, float]:
    out: dict[str, float] = {}
    conc = []
    for layer in layers:
        routing = layer.last_routing
        if routing is None:
            continue
        e = layer.ctx.num_experts
        load = torch.bincount(routing.experts.reshape(-1), minlength=e).float()
        i = layer.ctx.layer_index
        out[f"load/max_over_mean/l{i}"] = float(load.max() / load.mean())
        out[f"load/cv/l{i}"] = float(load.std(unbiased=False) / load.mean())
        if routing.experts.shape[1] > 1:
            conc.append(concentration(coactivation_counts(routing.experts, e), 1))
    if conc:
        out["collab/top1_share"] = sum(conc) / len(conc)
    return out


def dispatch_metrics(layers: list[MoELayer]) -> dict[str, float]:
    """Mean distinct devices per token and bytes on the wire per token, then reset the counters."""
    tokens = visits = nbytes = rows = 0
    for layer in layers:
        s = layer.dispatcher.stats
        tokens, visits, nbytes, rows = (
            tokens + s.tokens,
            visits + s.device_visits,
            nbytes + s.bytes,
            rows + s.rows,
        )
        s.reset()
    if not tokens:
        return {}
    return {
        "dispatch/devices_per_token": visits / tokens,
        "dispatch/rows_per_token": rows / tokens,
        "dispatch/all2all_bytes_per_token": nbytes / tokens,
    }
