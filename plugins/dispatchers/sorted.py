"""`sorted`: portable torch dispatch, the correctness reference for every other dispatcher.

Token copies are sorted by expert, each expert runs on its contiguous rows (a grouped GEMM on
CUDA/bf16), and the weighted outputs are scatter-added back to their tokens.
"""

from __future__ import annotations

import torch

from moelight.api import Dispatcher, Routing, dispatchers


@dispatchers.register("sorted")
class SortedDispatcher(Dispatcher):
    """Portable torch: sort token copies by expert, run each expert, scatter-add back."""

    single_device = True

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        t, k = routing.experts.shape
        flat_experts = routing.experts.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)
        token_of_row = order // k
        counts = torch.bincount(flat_experts, minlength=self.ctx.num_experts)
        out = self.experts.grouped(x[token_of_row], counts)
        weights = routing.weights.reshape(-1)[order].unsqueeze(1)
        y = torch.zeros_like(x, dtype=torch.float32)
        y.index_add_(0, token_of_row, out.float() * weights)
        self.stats.tokens += t
        self.stats.rows += t * k
        self.stats.device_visits += t
        return y.to(x.dtype)
