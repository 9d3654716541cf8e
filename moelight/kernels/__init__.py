"""Triton kernels with torch references, one concept per file.

Each kernel module holds the `@triton.jit` kernel, a readable torch reference of the same
operation, and a function taking `impl="triton" | "torch"` that runs one or the other. The
tests compare the two on CPU under `TRITON_INTERPRET=1` (see tests/test_grouplocal_kernels.py).

- `token_slots`: per token, which of its k choices open a (token, device) row and the slot each
  choice takes in that row.
- `counting_sort`: a stable counting sort of small integer keys (rows by destination device,
  received (row, expert) pairs by local expert).
- `row_plan`: the send-side row metadata of the group-local all2all.
- `permute`: gather rows by index (autograd: its adjoint is a sum over an inverse table).
- `combine`: weighted sums of rows per output row (autograd through rows and weights).
"""

from __future__ import annotations

from typing import Literal

import torch

from moelight.errors import ConfigError
from moelight.kernels._triton import HAS_TRITON

KernelMode = Literal["auto", "triton", "torch"]


def select_impl(mode: KernelMode, device: torch.device) -> Literal["triton", "torch"]:
    """`auto`: Triton on CUDA, the torch reference elsewhere; `triton` on CPU needs TRITON_INTERPRET=1."""
    if mode == "auto":
        return "triton" if device.type == "cuda" and HAS_TRITON else "torch"
    if mode == "triton" and not HAS_TRITON:
        raise ConfigError("dispatcher.kernels", "'triton' was asked for but triton is not installed")
    return mode


__all__ = ["HAS_TRITON", "KernelMode", "select_impl"]
