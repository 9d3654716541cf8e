"""Benchmark-only candidates that are not dispatchers: `hf-loop` and `gemm-only`.

`hf-loop` computes the experts the way Hugging Face's Qwen2-MoE / Mixtral sparse blocks do: a
Python loop over the experts that received tokens, `index_select` of each expert's tokens, the
expert's SwiGLU, and `index_add_` of the weighted result. It is the baseline most MoE code starts
from, and a correct MoE (the tests check it against `sorted`).

`gemm-only` times just `ExpertWeights.grouped` on rows already sorted by expert: the floor any
dispatcher's permutation and communication sit on top of.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moelight.moe.dispatch import DispatchStats
from moelight.moe.experts import ExpertWeights
from moelight.moe.layer_context import LayerContext
from moelight.moe.routing import Routing

HF_LOOP = "hf-loop"
GEMM_ONLY = "gemm-only"
REFERENCE_CANDIDATES = (HF_LOOP, GEMM_ONLY)


class HFLoopDispatcher(nn.Module):
    """Per-expert Python loop (Hugging Face's MoE blocks). One device; same signature as a dispatcher."""

    def __init__(self, ctx: LayerContext, experts: ExpertWeights):
        super().__init__()
        self.ctx = ctx
        object.__setattr__(self, "experts", experts)  # owned by the MoE layer, as for dispatchers
        local_of = torch.full((ctx.num_experts,), -1, dtype=torch.long)
        local_of[torch.tensor(experts.global_ids, dtype=torch.long)] = torch.arange(experts.num_local)
        self.register_buffer("local_of", local_of, persistent=False)
        self.stats = DispatchStats()

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        t, k = routing.experts.shape
        local = self.local_of[routing.experts]
        out = torch.zeros_like(x)
        weights = routing.weights.to(x.dtype)  # HF casts the routing weights to the hidden dtype
        # [E, k, T]: expert_mask[e, slot, token] says token's slot-th choice is e.
        expert_mask = F.one_hot(local, num_classes=self.experts.num_local).permute(2, 1, 0)
        hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist()
        for e in hit:
            slot, token = torch.where(expert_mask[e])
            rows = x.index_select(0, token)
            y = self.experts.expert(rows, e) * weights[token, slot, None]
            out.index_add_(0, token, y.to(x.dtype))
        self.stats.tokens += t
        self.stats.rows += t * k
        self.stats.device_visits += t
        return out


def sort_rows(x: torch.Tensor, experts: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token copies sorted by expert, and each expert's row count (the input of a grouped GEMM)."""
    flat = experts.reshape(-1)
    order = torch.argsort(flat, stable=True)
    return x[order // experts.shape[1]], torch.bincount(flat, minlength=num_experts)
