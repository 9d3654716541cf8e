"""Variable-split all_to_all of rows, with autograd, overlap and a wall-clock log.

`launch(x, meta, ...)` / `wait(...)`: one all_to_all carrying rows `x: [R, d]` and, packed
bit-exactly into the same buffer, float32 per-row metadata `meta: [R, m]` (router weights, local
expert ids): one collective instead of two; its backward is one all_to_all of the packed
gradients. It is split in two autograd nodes so that work created between them (other rows'
expert compute) runs while the rows are in flight, in the forward AND in the backward: the
autograd engine runs ready nodes in reverse creation order, so `wait`'s backward launches the
reverse exchange before that work's backward runs, and `launch`'s backward waits for it.
`wait` right after `launch` is a blocking exchange.

Every call goes through `group.alltoall_base`, so any c10d process group works (also a gloo
backend bound to its own address, as the emulated interconnect uses). `COMM` accumulates what
the benchmarks report: calls, bytes that left this rank, and the seconds this rank spent blocked
in the collectives (exposed communication). `COMM.latency_s` adds an emulated per-call latency.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class CommLog:
    """Per-process totals since the last `reset()`; `latency_s` is slept once per call issued.

    `per_call` holds each call's blocked seconds (issue + wait), in call order: the same calls
    in the same order on every rank, so benchmarks can line them up across ranks.
    """

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0
    latency_s: float = 0.0
    per_call: list[float] = field(default_factory=list)
    # Benchmarks only: a process group to barrier on before each call, so that every rank starts
    # the call together and the time inside it is the exchange's own, not waiting for a slower
    # rank (that wait is accumulated in `skew_seconds` instead).
    sync_group: object | None = None
    skew_seconds: float = 0.0

    def reset(self) -> None:
        self.calls, self.bytes, self.seconds, self.skew_seconds = 0, 0, 0.0, 0.0
        self.per_call = []


COMM = CommLog()


def _start(out: torch.Tensor, inp: torch.Tensor, out_splits: list[int], in_splits: list[int], group):
    """Issue one all_to_all; returns (work, call index). Counts the bytes that leave this rank."""
    if COMM.sync_group is not None:
        t_sync = time.perf_counter()
        dist.barrier(group=COMM.sync_group)
        COMM.skew_seconds += time.perf_counter() - t_sync
    t0 = time.perf_counter()
    if COMM.latency_s:
        time.sleep(COMM.latency_s)  # emulated per-call latency: never hidden by overlap
    rank = group.rank()
    row_bytes = inp[0].numel() * inp.element_size() if inp.dim() > 1 and inp.shape[0] else inp.element_size()
    COMM.calls += 1
    COMM.bytes += (sum(in_splits) - in_splits[rank]) * row_bytes
    work = group.alltoall_base(out, inp, out_splits, in_splits, dist.AllToAllOptions())
    spent = time.perf_counter() - t0
    COMM.seconds += spent
    COMM.per_call.append(spent)
    return work, len(COMM.per_call) - 1


def _finish(handle) -> None:
    work, index = handle
    t0 = time.perf_counter()
    work.wait()
    spent = time.perf_counter() - t0
    COMM.seconds += spent
    if index < len(COMM.per_call):  # a reset between issue and wait drops the call
        COMM.per_call[index] += spent


def all_to_all_counts(send_counts: torch.Tensor, group) -> torch.Tensor:
    """Exchange per-destination counts (int64 [P]) -> per-source counts."""
    recv = torch.empty_like(send_counts)
    _finish(_start(recv, send_counts, [1] * len(send_counts), [1] * len(send_counts), group))
    return recv


# ---- packing rows and float32 metadata into one buffer, bit-exactly -------------------------


def _meta_columns(meta_width: int, dtype: torch.dtype) -> int:
    return meta_width * 4 // torch.empty(0, dtype=dtype).element_size()


def pack(x: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
    """`[R, d]` rows (any dtype) + float32 `[R, m]` -> `[R, d + m*4/itemsize]` in x's dtype."""
    if meta is None or meta.shape[1] == 0:
        return x.contiguous()
    bits = meta.float().contiguous().view(torch.uint8).view(x.dtype)
    return torch.cat([x, bits.view(x.shape[0], _meta_columns(meta.shape[1], x.dtype))], dim=1)


def unpack(buf: torch.Tensor, d: int, meta_width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    if meta_width == 0:
        return buf, None
    bits = buf[:, d:].contiguous().view(torch.uint8).view(torch.float32)
    return buf[:, :d], bits.reshape(buf.shape[0], meta_width)


def _weight_grads(grad_meta: torch.Tensor | None, rows: int, width: int) -> torch.Tensor | None:
    """The metadata columns that carry a gradient back (zeros when autograd gave none)."""
    if not width:
        return None
    if grad_meta is None:
        return torch.zeros(rows, width, dtype=torch.float32)
    return grad_meta[:, :width]


class Transfer:
    """What `launch` and `wait` (and their backwards) share: splits, group, works, shapes."""

    def __init__(self, out_splits: list[int], in_splits: list[int], group, grad_width: int):
        self.out_splits = out_splits  # rows received from each rank
        self.in_splits = in_splits  # rows sent to each rank
        self.group = group
        self.grad_width = grad_width  # leading metadata columns that carry a gradient
        self.work = self.back_work = None
        self.d = self.m = 0


class _Launch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, meta, t: Transfer):
        t.d, t.m = x.shape[1], (0 if meta is None else meta.shape[1])
        buf = pack(x, meta)
        out = buf.new_empty((sum(t.out_splits), buf.shape[1]))
        t.work = _start(out, buf, t.out_splits, t.in_splits, t.group)
        t.send_buf = buf  # kept alive until the exchange completes
        ctx.t = t
        return out

    @staticmethod
    def backward(ctx, grad_buf):
        t = ctx.t
        _finish(t.back_work)
        gx, gm = unpack(t.back_out, t.d, t.grad_width)
        t.back_out = t.back_send = None
        if t.m:
            full = torch.zeros(gx.shape[0], t.m, dtype=torch.float32, device=gx.device)
            if gm is not None:
                full[:, : t.grad_width] = gm
            return gx, full, None
        return gx, None, None


class _Wait(torch.autograd.Function):
    @staticmethod
    def forward(ctx, buf, t: Transfer):
        _finish(t.work)
        t.work = t.send_buf = None
        ctx.t, ctx.buf_shape = t, buf.shape
        rx, rmeta = unpack(buf, t.d, t.m)
        return rx, (rmeta if rmeta is not None else rx.new_empty(rx.shape[0], 0, dtype=torch.float32))

    @staticmethod
    def backward(ctx, grad_x, grad_meta):
        t = ctx.t
        send = pack(grad_x.contiguous(), _weight_grads(grad_meta, grad_x.shape[0], t.grad_width))
        t.back_out = send.new_empty((sum(t.in_splits), send.shape[1]))
        t.back_send = send
        t.back_work = _start(t.back_out, send, t.in_splits, t.out_splits, t.group)
        # The buffer's gradient is not used by `_Launch.backward` (it reads `t.back_out` once
        # the reverse exchange is done); a zero-stride stand-in keeps autograd's shapes valid.
        return send.new_zeros(()).expand(ctx.buf_shape), None


def launch(
    x: torch.Tensor,
    meta: torch.Tensor | None,
    out_splits: list[int],
    in_splits: list[int],
    group,
    grad_width: int = 0,
) -> tuple[torch.Tensor, Transfer]:
    """Start an exchange; pass the returned `(buffer, transfer)` to `wait` after the local work."""
    t = Transfer(out_splits, in_splits, group, grad_width)
    return _Launch.apply(x, meta, t), t


def wait(buf: torch.Tensor, t: Transfer) -> tuple[torch.Tensor, torch.Tensor]:
    return _Wait.apply(buf, t)
