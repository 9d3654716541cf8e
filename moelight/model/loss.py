"""Next-token cross-entropy over chunks of rows, so the full [tokens, vocab] logits never exist.

A 152k-token vocabulary at 8 x 2048 tokens is 10 GB of fp32 logits (and as much again for their
gradient). Here each chunk of `chunk` rows is projected, upcast and reduced on its own; under
autograd each chunk is checkpointed (torch.utils.checkpoint, non-reentrant), so backward
recomputes one chunk's logits at a time: the peak is one chunk's logits and their gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def _chunk_loss_sum(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (h @ weight.t()).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 0
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` (in fp32) against `targets` (-100 = ignored),
    equal to `F.cross_entropy(logits.float(), targets, ignore_index=-100)`.

    hidden: [..., d]; weight: [vocab, d]; targets: [...]; chunk: rows per chunk, 0 = one piece.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    if chunk <= 0 or chunk >= h.shape[0]:
        logits = (h @ weight.t()).float()
        return F.cross_entropy(logits, t, ignore_index=IGNORE)
    keep = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], chunk):
        h_c, t_c = h[start : start + chunk], t[start : start + chunk]
        if keep:
            total = total + checkpoint(_chunk_loss_sum, h_c, weight, t_c, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(h_c, weight, t_c)
    return total / (t != IGNORE).sum()
