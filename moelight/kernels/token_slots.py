"""Per token, how its k expert choices group by device.

For choice j of token t on device `dev[t, j]`:
- `first[t, j]`: the lowest j' with the same device (j itself when it is the first), i.e. the
  choice that opens the (token, device) row this choice joins;
- `slot[t, j]`: how many earlier choices of t share its device, i.e. its slot in that row.
A token visits `(first == arange(k)).sum(1)` distinct devices.
"""

import torch

from moelight.kernels._triton import cdiv, jit, tl


@jit
def _token_slots_kernel(dev_ptr, first_ptr, slot_ptr, T, K: tl.constexpr, BLOCK_T: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    live = t < T
    row = t.to(tl.int64) * K
    # k is small: compare every choice with the earlier ones (k^2 loads, all in registers).
    for j in tl.static_range(K):
        dj = tl.load(dev_ptr + row + j, mask=live, other=0)
        slot = tl.zeros([BLOCK_T], dtype=tl.int64)
        first = tl.full([BLOCK_T], j, tl.int64)
        for i in tl.static_range(j):
            di = tl.load(dev_ptr + row + i, mask=live, other=-1)
            same = di == dj
            slot += same.to(tl.int64)
            first = tl.where(same & (first == j), i, first)
        tl.store(first_ptr + row + j, first, mask=live)
        tl.store(slot_ptr + row + j, slot, mask=live)


def token_slots_torch(dev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = dev.shape[1]
    same = dev.unsqueeze(2) == dev.unsqueeze(1)  # [T, j, i]
    earlier = torch.ones(k, k, dtype=torch.bool, device=dev.device).tril(-1)
    slot = (same & earlier).sum(2)
    idx = torch.arange(k, device=dev.device).expand_as(same)
    first = torch.where(same, idx, k).amin(2)
    return first, slot


def token_slots_triton(dev: torch.Tensor, block_t: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    dev = dev.contiguous()
    t, k = dev.shape
    first = torch.empty_like(dev)
    slot = torch.empty_like(dev)
    if t:
        _token_slots_kernel[(cdiv(t, block_t),)](dev, first, slot, t, K=k, BLOCK_T=block_t)
    return first, slot


def token_slots(dev: torch.Tensor, impl: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """`dev: LongTensor[T, k]` device of each choice -> `(first, slot)`, both LongTensor[T, k]."""
    return token_slots_triton(dev) if impl == "triton" else token_slots_torch(dev)
