"""Next-token logits of a token sequence, with or without the KV cache.

With the cache, a call feeds only the tokens the cache does not already hold (the longest
common prefix with the previous call is reused), so decoding one token costs one position and a
chat turn re-feeds only the new text. Without it every call runs the whole sequence: the
reference the cached path must agree with.
"""

from __future__ import annotations

import torch

from moelight.model.kv_cache import KVCache
from moelight.model.transformer import MoETransformer


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case (b extends a), compared at C speed
        return n
    return next(i for i in range(n) if a[i] != b[i])


class Decoder:
    def __init__(self, model: MoETransformer, device: torch.device, use_cache: bool = True) -> None:
        self.model = model
        self.device = device
        self.cache: KVCache | None = model.new_cache() if use_cache else None
        self.fed: list[int] = []  # the tokens whose keys/values the cache holds

    @torch.inference_mode()
    def logits_after(self, ids: list[int]) -> torch.Tensor:
        """The next-token logits [vocab] (float32) after the sequence `ids`."""
        if not ids:
            raise ValueError("the prompt is empty: nothing to continue")
        if self.cache is None:
            x = torch.tensor([ids], device=self.device)
            return self.model(x)[0, -1].float()
        # Keep the shared prefix; at least one token must be fed to get its logits.
        keep = min(common_prefix(self.fed, ids), len(ids) - 1)
        self.cache.truncate(keep)
        x = torch.tensor([ids[keep:]], device=self.device)
        logits = self.model.forward_cached(x, self.cache)[0, -1].float()
        self.fed = list(ids)
        return logits
