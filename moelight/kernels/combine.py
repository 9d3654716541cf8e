"""Weighted sums of rows: `out[m] = sum_s weight[m, s] * src[index[m, s]]` (index -1: skipped).

Used twice by the group-local dispatch: the receiver folds each received row's expert outputs
into one row (with the router weights), and the source sums the partial rows that come back
for each token (no weights). Sums are float32; the result is float32.

Every src row is referenced by at most one (m, s), so the backward scatters without atomics:
`grad_src[index[m, s]] = weight[m, s] * grad_out[m]` and `grad_weight[m, s] = <grad_out[m], src[index[m, s]]>`.
"""

import torch

from moelight.kernels._triton import cdiv, jit, next_power_of_2, tl


@jit
def _combine_kernel(
    src_ptr,
    index_ptr,
    weight_ptr,
    out_ptr,
    D,
    W: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = cols < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for s in tl.static_range(W):
        n = tl.load(index_ptr + m * W + s) + tl.zeros(
            [BLOCK_D], dtype=tl.int64
        )  # as a vector: masks stay vectors
        row = tl.load(src_ptr + tl.maximum(n, 0) * D + cols, mask=in_d & (n >= 0), other=0.0).to(tl.float32)
        if HAS_WEIGHT:
            row = row * tl.load(weight_ptr + m * W + s).to(tl.float32)
        acc += row
    tl.store(out_ptr + m * D + cols, acc, mask=in_d)


@jit
def _combine_backward_kernel(
    grad_ptr,
    src_ptr,
    index_ptr,
    weight_ptr,
    grad_src_ptr,
    grad_weight_ptr,
    D,
    W: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64)
    for s in tl.static_range(W):
        n = tl.load(index_ptr + m * W + s) + tl.zeros([BLOCK_D], dtype=tl.int64)
        valid = n >= 0
        n = tl.maximum(n, 0)
        scale = 1.0
        if HAS_WEIGHT:
            scale = tl.load(weight_ptr + m * W + s).to(tl.float32)
        dot = tl.zeros([BLOCK_D], dtype=tl.float32)
        for c in range(0, D, BLOCK_D):
            cols = c + tl.arange(0, BLOCK_D)
            mask = (cols < D) & valid
            g = tl.load(grad_ptr + m * D + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(grad_src_ptr + n * D + cols, (g * scale).to(grad_src_ptr.dtype.element_ty), mask=mask)
            if HAS_WEIGHT:
                x = tl.load(src_ptr + n * D + cols, mask=mask, other=0.0).to(tl.float32)
                dot += g * x
        if HAS_WEIGHT:
            tl.store(grad_weight_ptr + m * W + s, tl.sum(dot, axis=0))


def _block_d(d: int) -> int:
    return min(1024, next_power_of_2(max(d, 16)))


def combine_forward_triton(
    src: torch.Tensor, index: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    m, w = index.shape
    d = src.shape[1]
    out = torch.empty(m, d, dtype=torch.float32, device=src.device)
    if m:
        block = _block_d(d)
        has_weight = weight is not None
        _combine_kernel[(m, cdiv(d, block))](
            src.contiguous(),
            index.contiguous(),
            weight.contiguous() if has_weight else index,
            out,
            d,
            W=w,
            HAS_WEIGHT=has_weight,
            BLOCK_D=block,
        )
    return out


def combine_backward_triton(
    grad: torch.Tensor, src: torch.Tensor, index: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    m, w = index.shape
    d = src.shape[1]
    grad_src = torch.zeros_like(src)  # rows nobody references get no gradient
    grad_weight = None if weight is None else torch.zeros(m, w, dtype=torch.float32, device=src.device)
    if m:
        has_weight = weight is not None
        _combine_backward_kernel[(m,)](
            grad.contiguous(),
            src.contiguous(),
            index.contiguous(),
            weight.contiguous() if has_weight else index,
            grad_src,
            grad_weight if has_weight else grad_src,
            d,
            W=w,
            HAS_WEIGHT=has_weight,
            BLOCK_D=_block_d(d),
        )
    return grad_src, grad_weight


class _CombineRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, index, weight):
        ctx.save_for_backward(src, index, weight)
        return combine_forward_triton(src, index, weight)

    @staticmethod
    def backward(ctx, grad):
        src, index, weight = ctx.saved_tensors
        grad_src, grad_weight = combine_backward_triton(grad, src, index, weight)
        if weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_src, None, grad_weight


def combine_rows_torch(src: torch.Tensor, index: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    valid = index >= 0
    rows = src.float()[index.clamp(min=0)]  # [M, W, d]
    scale = valid.float() if weight is None else weight.float() * valid
    return (rows * scale.unsqueeze(-1)).sum(1)


def combine_rows(
    src: torch.Tensor, index: torch.Tensor, weight: torch.Tensor | None = None, impl: str = "torch"
) -> torch.Tensor:
    """`src: [N, d]`, `index: LongTensor[M, W]`, `weight: [M, W]` or None -> float32 `[M, d]`."""
    if impl == "triton":
        return _CombineRows.apply(src, index, weight)
    return combine_rows_torch(src, index, weight)
