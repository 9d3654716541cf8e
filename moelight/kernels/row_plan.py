"""Send-side metadata of the group-local all2all: which rows go out and what they carry.

Every choice (t, j) belongs to one send row: with `per_device` rows the row opened by the first
choice of t on the same device (`first`, `slot` from `token_slots`), else its own row. Given the
place of every opening choice in the send buffer (`opened[t*k + j]`, -1 for choices that open
none; from `counting_sort` by destination device) this writes:
- `row_token[R]`: the token each row copies;
- `row_experts[R, W]`: the local expert ids each row asks for (-1 in unused slots);
- `dest[T, k]`: where choice (t, j)'s weight goes in the flattened `[R, W]` weight table;
- `token_rows[T, k]`: the rows token t opened (-1 padded): the inverse of `row_token`.
W is k for per-device rows and 1 for per-expert rows.
"""

import torch

from moelight.kernels._triton import cdiv, jit, tl


@jit
def _row_plan_kernel(
    first_ptr,
    slot_ptr,
    local_ptr,
    opened_ptr,
    row_token_ptr,
    row_experts_ptr,
    dest_ptr,
    token_rows_ptr,
    T,
    K: tl.constexpr,
    W: tl.constexpr,
    PER_DEVICE: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    live = t < T
    base = t.to(tl.int64) * K
    for j in tl.static_range(K):
        if PER_DEVICE:
            opener = tl.load(first_ptr + base + j, mask=live, other=0)
            slot = tl.load(slot_ptr + base + j, mask=live, other=0)
        else:
            opener = tl.full([BLOCK_T], j, tl.int64)
            slot = tl.zeros([BLOCK_T], dtype=tl.int64)
        row = tl.load(opened_ptr + base + opener, mask=live, other=0)
        opens = opener == j
        tl.store(row_token_ptr + row, t.to(tl.int64), mask=live & opens)
        tl.store(token_rows_ptr + base + j, tl.where(opens, row, -1), mask=live)
        expert = tl.load(local_ptr + base + j, mask=live, other=0)
        tl.store(row_experts_ptr + row * W + slot, expert, mask=live)
        tl.store(dest_ptr + base + j, row * W + slot, mask=live)


def row_plan_torch(first, slot, local, opened, num_rows: int, per_device: bool):
    t, k = local.shape
    w = k if per_device else 1
    arange_k = torch.arange(k, device=local.device)
    if not per_device:
        first, slot = arange_k.expand(t, k), torch.zeros_like(local)
    row = opened.view(t, k).gather(1, first)
    opens = first == arange_k
    tokens = torch.arange(t, device=local.device).unsqueeze(1).expand(t, k)
    row_token = torch.empty(num_rows, dtype=torch.long, device=local.device)
    row_token[row[opens]] = tokens[opens]
    dest = row * w + slot
    row_experts = torch.full((num_rows * w,), -1, dtype=torch.long, device=local.device)
    row_experts[dest.reshape(-1)] = local.reshape(-1)
    token_rows = torch.where(opens, row, -1)
    return row_token, row_experts.view(num_rows, w), dest, token_rows


def row_plan_triton(first, slot, local, opened, num_rows: int, per_device: bool, block_t: int = 128):
    t, k = local.shape
    w = k if per_device else 1
    local = local.contiguous()
    row_token = torch.empty(num_rows, dtype=torch.long, device=local.device)
    row_experts = torch.full((num_rows, w), -1, dtype=torch.long, device=local.device)
    dest = torch.empty_like(local)
    token_rows = torch.empty_like(local)
    if t:
        _row_plan_kernel[(cdiv(t, block_t),)](
            first.contiguous(),
            slot.contiguous(),
            local,
            opened.contiguous(),
            row_token,
            row_experts,
            dest,
            token_rows,
            t,
            K=k,
            W=w,
            PER_DEVICE=per_device,
            BLOCK_T=block_t,
        )
    return row_token, row_experts, dest, token_rows


def row_plan(
    first: torch.Tensor,
    slot: torch.Tensor,
    local: torch.Tensor,
    opened: torch.Tensor,
    num_rows: int,
    per_device: bool,
    impl: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(row_token, row_experts, dest, token_rows)`; see the module docstring."""
    fn = row_plan_triton if impl == "triton" else row_plan_torch
    return fn(first, slot, local, opened, num_rows, per_device)
