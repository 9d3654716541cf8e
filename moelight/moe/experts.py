"""The expert weights of one MoE layer, in the one layout every dispatcher shares.

`w1, v1, w2: [E_local, ffn, hidden]` (SwiGLU: y = (silu(x w1^T) * (x v1^T)) w2), which is also
MegaBlocks' layout. Rows are the experts this rank holds, in the order of `global_ids`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ExpertWeights(nn.Module):
    def __init__(
        self, global_ids: list[int], hidden_size: int, expert_hidden_size: int, init_std: float = 0.02
    ):
        super().__init__()
        self.global_ids = list(global_ids)
        self.hidden_size = hidden_size
        self.expert_hidden_size = expert_hidden_size
        n = len(global_ids)
        self.w1 = nn.Parameter(torch.empty(n, expert_hidden_size, hidden_size))
        self.v1 = nn.Parameter(torch.empty(n, expert_hidden_size, hidden_size))
        self.w2 = nn.Parameter(torch.empty(n, hidden_size, expert_hidden_size))
        self.init_std = init_std
        self.reset_parameters()

    # w2 is stored [E, hidden, ffn] so that every matrix is (out, in) like nn.Linear.
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each expert is drawn from its own generator seeded by (one draw of the global RNG, global id).

        So expert g gets the same weights whichever rank holds it, and the global RNG advances by
        the same amount on every rank: a run at any expert-parallel size starts from the same model.
        """
        base = int(torch.randint(0, 2**62, (1,), device="cpu"))
        if self.w1.is_meta:
            return
        gen = torch.Generator(device=self.w1.device)
        for i, g in enumerate(self.global_ids):
            gen.manual_seed(base + g)
            self.w1[i].normal_(0.0, self.init_std, generator=gen)
            self.v1[i].normal_(0.0, self.init_std, generator=gen)
            self.w2[i].normal_(0.0, self.init_std / math.sqrt(2.0), generator=gen)

    def forward(self, dispatch: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        """`dispatch(*args)`: the MoE layer calls its dispatcher through this module so that a
        wrapper of it (FSDP2's `fully_shard` gathers the expert shards in its forward hooks) sees
        the weights used from here."""
        return dispatch(*args)

    @property
    def num_local(self) -> int:
        return len(self.global_ids)

    def in_dtype(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(w1, v1, w2)` in `dtype`: the parameters themselves, or differentiable casts of them
        (as autocast casts an nn.Linear's weight under bf16-mixed), for kernels that take raw tensors."""
        return tuple(w if w.dtype == dtype else w.to(dtype) for w in (self.w1, self.v1, self.w2))

    def expert(self, x: torch.Tensor, local: int) -> torch.Tensor:
        """One expert's SwiGLU on rows `x: [n, d]`: the readable reference."""
        h = F.silu(x @ self.w1[local].t()) * (x @ self.v1[local].t())
        return h @ self.w2[local].t()

    def grouped(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Rows sorted by local expert, `counts[e]` rows for expert e -> outputs in the same order."""
        if x_sorted.is_cuda and hasattr(torch, "_grouped_mm") and x_sorted.dtype == torch.bfloat16:
            offs = torch.cumsum(counts, 0).to(torch.int32)
            h = F.silu(torch._grouped_mm(x_sorted, self.w1.transpose(-2, -1), offs=offs))
            h = h * torch._grouped_mm(x_sorted, self.v1.transpose(-2, -1), offs=offs)
            return torch._grouped_mm(h, self.w2.transpose(-2, -1), offs=offs)
        outs = []
        for e, rows in enumerate(torch.split(x_sorted, counts.tolist())):
            if rows.shape[0]:
                outs.append(self.expert(rows, e))
        if not outs:
            return x_sorted.new_zeros(x_sorted.shape)
        return torch.cat(outs)


def named_expert_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter, ExpertWeights]]:
    """Every expert parameter in `module`: (its name in `module`, the parameter, the ExpertWeights holding it)."""
    for name, sub in module.named_modules():
        if isinstance(sub, ExpertWeights):
            for pname, p in sub.named_parameters(recurse=False):
                yield (f"{name}.{pname}" if name else pname), p, sub
