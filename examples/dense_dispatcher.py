# examples/dense_dispatcher.py
"""A dispatcher plugin written from CONTRIBUTING.md: every expert on every token, weighted densely.

The chosen experts' combine weights are scattered into a dense [T, E] matrix and every expert
runs on every token: E/k times the work of a sparse dispatch, and no sorting, so it is a short,
obviously correct dispatcher for a handful of experts (and a readable statement of the layout
`w1, v1: [E, ffn, d]`, `w2: [E, d, ffn]`). One device only.

    plugins: [examples/dense_dispatcher.py]
    dispatcher: {name: dense}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moelight.api import Dispatcher, Routing, dispatchers


@dispatchers.register("dense")
class DenseDispatcher(Dispatcher):
    """Every local expert on every token, combined by a dense [T, E] weight matrix (small E, one device)."""

    single_device = True  # refused, with a recipe error, under expert parallelism

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        t, k = routing.experts.shape
        # Column e holds expert e's weight for each token (0 where the token did not choose e).
        combine = torch.zeros(t, self.ctx.num_experts, device=x.device)
        combine = combine.scatter_add(1, routing.experts, routing.weights.float())
        w1, v1, w2 = self.experts.in_dtype(x.dtype)
        h = F.silu(torch.einsum("td,efd->tef", x, w1)) * torch.einsum("td,efd->tef", x, v1)
        y = torch.einsum("tef,edf->ted", h, w2).float()  # [T, E, d]: every expert's output
        out = torch.einsum("ted,te->td", y, combine)
        self.stats.tokens += t
        self.stats.rows += t * k
        self.stats.device_visits += t
        return out.to(x.dtype)
