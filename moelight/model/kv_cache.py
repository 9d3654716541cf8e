"""The keys and values of the tokens a model has already seen, kept for incremental decoding."""

from __future__ import annotations

import torch


class LayerKV:
    """One attention layer's cached keys and values, `[B, n_kv_heads, length, head_dim]`
    (before grouped-query heads are repeated, so GQA models cache less)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions' keys/values; returns all of them (cached + new)."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    def truncate(self, length: int) -> None:
        if self.k is not None:
            self.k, self.v = self.k[:, :, :length], self.v[:, :, :length]


class KVCache:
    """Per-layer keys and values (`MoETransformer.forward_cached`)."""

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerKV() for _ in range(n_layers)]

    @property
    def length(self) -> int:
        """How many positions the cache holds."""
        return self.layers[0].length

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (e.g. a chat turn re-rendered differently)."""
        for layer in self.layers:
            layer.truncate(length)
