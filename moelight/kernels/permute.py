"""Gather rows by index: `out[i] = src[index[i]]` (tokens into send rows, received rows into
expert order).

The backward sums the gradients of all copies of a source row. The Triton path gets the copies
of each row from an `inverse` table `[N, W]` (the rows copied from source row n, -1 padded; the
dispatch has it at hand) and reuses the `combine` kernel, so no atomics are needed.
"""

import torch

from moelight.kernels._triton import cdiv, jit, next_power_of_2, tl
from moelight.kernels.combine import combine_forward_triton


@jit
def _gather_kernel(src_ptr, index_ptr, out_ptr, D, BLOCK_D: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.load(index_ptr + i)
    row = tl.load(src_ptr + n * D + cols, mask=cols < D)
    tl.store(out_ptr + i * D + cols, row, mask=cols < D)


def gather_rows_triton_forward(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    d = src.shape[1]
    out = torch.empty(index.shape[0], d, dtype=src.dtype, device=src.device)
    if index.shape[0]:
        block = min(1024, next_power_of_2(max(d, 16)))
        _gather_kernel[(index.shape[0], cdiv(d, block))](
            src.contiguous(), index.contiguous(), out, d, BLOCK_D=block
        )
    return out


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, index, inverse):
        ctx.save_for_backward(inverse)
        return gather_rows_triton_forward(src, index)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return combine_forward_triton(grad, inverse, None).to(grad.dtype), None, None


def gather_rows(
    src: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor, impl: str = "torch"
) -> torch.Tensor:
    """`src: [N, d]`, `index: LongTensor[M]` -> `[M, d]`; `inverse: LongTensor[N, W]` lists the copies of each row."""
    if impl == "triton":
        return _GatherRows.apply(src, index, inverse)
    return src[index]
