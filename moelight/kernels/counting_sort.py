"""A stable counting sort of small integer keys: where each item goes when grouped by key.

`keys: LongTensor[N]`, values in `0..num_bins-1`, or -1 for items to leave out. Returns
`pos[N]` (the item's place in key-major, input-minor order; -1 when left out), `order[n]`
(the inverse: the item at each place; `torch.argsort(keys, stable=True)` without the -1s) and
`counts[num_bins]`. Bins are few (devices, or experts on one device), so the Triton version is
two passes over blocks: a per-block histogram, an exclusive scan of the [bins, blocks] table
(in torch), and a pass that ranks items within their block by a cumulative sum of one-hots.
"""

import torch

from moelight.kernels._triton import cdiv, jit, next_power_of_2, tl


@jit
def _histogram_kernel(key_ptr, hist_ptr, N, NUM_BINS: tl.constexpr, BINS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    key = tl.load(key_ptr + offs, mask=offs < N, other=-1)
    bins = tl.arange(0, BINS)
    hot = (key[:, None] == bins[None, :]).to(tl.int64)
    tl.store(hist_ptr + pid * NUM_BINS + bins, tl.sum(hot, axis=0), mask=bins < NUM_BINS)


@jit
def _place_kernel(
    key_ptr, base_ptr, pos_ptr, order_ptr, N, NUM_BINS: tl.constexpr, BINS: tl.constexpr, BLOCK: tl.constexpr
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    live = offs < N
    key = tl.load(key_ptr + offs, mask=live, other=-1)
    valid = live & (key >= 0)
    bins = tl.arange(0, BINS)
    hot = (key[:, None] == bins[None, :]).to(tl.int64)
    before = tl.cumsum(hot, axis=0) - hot  # same-key items earlier in this block
    rank = tl.sum(before * hot, axis=1)
    base = tl.load(base_ptr + pid * NUM_BINS + key, mask=valid, other=0)
    pos = tl.where(valid, base + rank, -1)
    tl.store(pos_ptr + offs, pos, mask=live)
    tl.store(order_ptr + pos, offs.to(tl.int64), mask=valid)


def counting_sort_torch(keys: torch.Tensor, num_bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    valid = keys >= 0
    counts = torch.bincount(keys[valid], minlength=num_bins)
    n = int(counts.sum())
    order = torch.argsort(torch.where(valid, keys, num_bins), stable=True)[:n]
    pos = torch.full_like(keys, -1)
    pos[order] = torch.arange(n, device=keys.device)
    return pos, order, counts


def counting_sort_triton(
    keys: torch.Tensor, num_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    keys = keys.contiguous()
    n_items = keys.numel()
    bins = next_power_of_2(num_bins)
    block = max(16, min(1024, next_power_of_2(max(1, 8192 // bins))))  # one-hot tile stays small
    blocks = max(1, cdiv(n_items, block))
    hist = torch.zeros(blocks, num_bins, dtype=torch.long, device=keys.device)
    if n_items:
        _histogram_kernel[(blocks,)](keys, hist, n_items, NUM_BINS=num_bins, BINS=bins, BLOCK=block)
    counts = hist.sum(0)
    # Exclusive scan in bin-major order: block b's items of bin e start after all earlier bins
    # and after bin e's items of blocks < b.
    flat = hist.t().reshape(-1)
    base = (torch.cumsum(flat, 0) - flat).view(num_bins, blocks).t().contiguous()
    n = int(counts.sum())
    pos = torch.empty_like(keys)
    order = torch.empty(n, dtype=torch.long, device=keys.device)
    if n_items:
        _place_kernel[(blocks,)](keys, base, pos, order, n_items, NUM_BINS=num_bins, BINS=bins, BLOCK=block)
    return pos, order, counts


def counting_sort(
    keys: torch.Tensor, num_bins: int, impl: str = "torch"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See the module docstring: `(pos, order, counts)`."""
    fn = counting_sort_triton if impl == "triton" else counting_sort_torch
    return fn(keys.reshape(-1), num_bins)
