"""`grouplocal`: the group-local all2all. A token crosses the network once per device it visits.

Per token, D = the distinct devices holding its k experts. The source sends ONE row per
(token, device in D) carrying the token and that device's local expert ids and weights; the
receiver expands rows into (row, expert) pairs, runs its experts grouped, folds each row's
weighted expert outputs into one row and sends one row back; the source sums its |D| rows.
Bytes per token and direction: |D|*d instead of k*d.

`rows: per_expert` sends one row per (token, expert) instead, what MegaBlocks and most EP
systems send, so both can be measured on the same run. With one device there is no
communication and this is a local grouped dispatch (equal to `sorted`).

Steps (kernels in moelight/kernels, Triton on CUDA, torch references elsewhere):
  send plan   token_slots -> counting_sort by device -> row_plan
  permute     gather_rows(x) -> all_to_all (counts first; then the rows with their weights and
              local ids packed into the same buffer) -> counting_sort by local expert -> gather_rows
  experts     ExpertWeights.grouped
  combine     combine_rows (weighted, per received row) -> all_to_all back -> combine_rows (sum per token)
Collectives per layer: 3 forward (counts, rows out, rows back), 2 backward (the two row
exchanges reversed, the weights' gradient packed with the rows'); MegaBlocks makes the same 5.
Rows for this device never enter the all2all; with `overlap` (default) they run while the remote
rows are in flight, and the remote rows travel in `chunks` pipelined exchanges so that the
experts run on one chunk while the next is in flight (moelight/parallel/all_to_all.py, via the api:
`launch_all_to_all`/`wait_all_to_all`, forward and backward; each chunk adds its calls' latency).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from moelight.api import (
    ConfigError,
    Dispatcher,
    PluginParams,
    Routing,
    all_to_all_counts,
    combine_rows,
    counting_sort,
    dispatchers,
    gather_rows,
    launch_all_to_all,
    row_plan,
    select_impl,
    token_slots,
    wait_all_to_all,
)


@dispatchers.register("grouplocal")
class GroupLocalDispatcher(Dispatcher):
    """Group-local all2all: one row per (token, device) visited, experts run grouped on the receiver."""

    class Params(PluginParams):
        rows: Literal["per_device", "per_expert"] = Field(
            "per_device",
            description="per_device: one row per (token, device) (group-local); "
            "per_expert: one row per (token, expert), the usual EP baseline",
        )
        overlap: bool = Field(
            True,
            description="run the rows that stay on this device while the remote rows are in flight "
            "(asynchronous all2all, forward and backward)",
        )
        chunks: int = Field(
            2,
            ge=1,
            description="with overlap: remote rows in this many pipelined exchanges, so the experts "
            "run on one chunk while the next is in flight",
        )
        kernels: Literal["auto", "triton", "torch"] = Field(
            "auto", description="auto: Triton on CUDA, torch references elsewhere"
        )

    def __init__(self, params: Params, ctx, experts, ep=None):
        super().__init__(params, ctx, experts, ep)
        placement = ctx.placement.detach().cpu().long()
        # A model built outside expert parallelism (e.g. to count parameters) may hold part of a
        # multi-device placement; it is never run (forward checks), so only a real EP group must match.
        if self.ep.size > 1 and ctx.num_devices != self.ep.size:
            raise ConfigError(
                "parallel.expert_parallel",
                f"layer {ctx.layer_index}: the placement spreads experts over {ctx.num_devices} devices "
                f"but the expert-parallel group has {self.ep.size} ranks",
            )
        mine = (placement == self.ep.rank).nonzero().flatten().tolist()
        if mine != list(experts.global_ids):
            raise ConfigError(
                "parallel.placement",
                f"layer {ctx.layer_index}: rank {self.ep.rank} holds experts {list(experts.global_ids)} "
                f"but the placement puts {mine} on it",
            )
        # Local index of each global expert on the device that holds it (experts in id order).
        local = torch.empty_like(placement)
        for d in range(self.ep.size):
            ids = (placement == d).nonzero().flatten()
            local[ids] = torch.arange(len(ids))
        self.register_buffer("device_of", placement, persistent=False)
        self.register_buffer("local_of", local, persistent=False)
        self.per_device = params.rows == "per_device"
        self.num_devices = ctx.num_devices

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        if self.ep.size < self.num_devices:
            raise ConfigError(
                "parallel.expert_parallel",
                f"this layer's placement needs {self.num_devices} expert-parallel ranks; it runs on {self.ep.size}",
            )
        impl = select_impl(self.params.kernels, x.device)
        t, k = routing.experts.shape
        p = self.ep.size
        dev = self.device_of[routing.experts]
        local = self.local_of[routing.experts]

        # --- send plan: which rows go to which device, carrying which experts and weights.
        first, slot = token_slots(dev, impl)
        opens = first == torch.arange(k, device=dev.device)
        keys = torch.where(opens, dev, -1) if self.per_device else dev
        opened, _, send_counts = counting_sort(keys, p, impl)
        send_splits = send_counts.tolist()  # one host sync: split sizes, row count and stats
        num_rows = sum(send_splits)
        row_token, row_experts, dest, token_rows = row_plan(
            first, slot, local, opened, num_rows, self.per_device, impl
        )
        width = row_experts.shape[1]
        row_weights = torch.zeros(num_rows * width, dtype=torch.float32, device=x.device)
        row_weights = row_weights.index_put((dest.reshape(-1),), routing.weights.float().reshape(-1))
        row_weights = row_weights.view(num_rows, width)
        send_x = gather_rows(x, row_token, token_rows, impl)

        if p == 1:
            back = self._experts(send_x, row_experts, row_weights, impl)
        else:
            back = self._exchange(send_x, row_experts, row_weights, send_counts, send_splits, impl)
        y = combine_rows(back, token_rows, None, impl)  # the source sums the rows of each token

        self._count(t, opens, send_splits, x)
        return y.to(x.dtype)

    def _experts(
        self, rows: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor, impl
    ) -> torch.Tensor:
        """Rows asking for local experts (ids [R, W], -1 unused) -> one weighted output row each."""
        width = experts.shape[1]
        pos, order, expert_counts = counting_sort(experts, self.experts.num_local, impl)
        pair_index = pos.view(-1, width)
        xs = gather_rows(rows, order // width, pair_index, impl)
        ys = self.experts.grouped(xs, expert_counts)
        if xs.requires_grad and not ys.requires_grad:
            ys = ys + xs.sum() * 0  # no rows here: keep the graph so every rank's backward exchange runs
        return combine_rows(ys, pair_index, weights, impl).to(rows.dtype)

    def _exchange(self, send_x, row_experts, row_weights, send_counts, send_splits, impl) -> torch.Tensor:
        """Remote rows out and back: counts, then rows (their metadata packed in), then rows back
        (the backward: the two row exchanges reversed). Rows for this device never leave it.

        With `overlap`, the remote rows go in `chunks` exchanges (each destination's rows split
        evenly), all launched at once: the experts run on chunk c while chunk c+1 is in flight
        and send chunk c back while running chunk c+1; the local rows run half while the first
        chunk is in flight, half while the last comes back. The backward overlaps the same way.
        """
        r, group, width = self.ep.rank, self.ep.group, row_experts.shape[1]
        p = self.ep.size
        recv_splits = all_to_all_counts(send_counts, group).tolist()
        starts = [sum(send_splits[:d]) for d in range(p)]
        lo, hi = starts[r], starts[r] + send_splits[r]
        n = self.params.chunks if self.params.overlap else 1

        def part(count: int, c: int) -> tuple[int, int]:
            return count * c // n, count * (c + 1) // n

        # Weights and local ids travel in the row buffer; ids are exact in float32 (< 2**24).
        meta = torch.cat([row_weights, row_experts.float()], dim=1)
        index, sends, recvs = [], [], []
        for c in range(n):
            rows = [
                torch.arange(starts[d] + part(send_splits[d], c)[0], starts[d] + part(send_splits[d], c)[1])
                for d in range(p)
                if d != r
            ]
            index.append(torch.cat(rows).to(send_x.device))
            sends.append(
                [0 if d == r else part(send_splits[d], c)[1] - part(send_splits[d], c)[0] for d in range(p)]
            )
            recvs.append(
                [0 if s == r else part(recv_splits[s], c)[1] - part(recv_splits[s], c)[0] for s in range(p)]
            )

        def local(a: int, b: int) -> torch.Tensor:
            return self._experts(send_x[a:b], row_experts[a:b], row_weights[a:b], impl)

        mid = (lo + hi) // 2 if self.params.overlap else hi
        out = [
            launch_all_to_all(send_x[i], meta[i], recvs[c], sends[c], group, grad_width=width)
            for c, i in enumerate(index)
        ]
        parts = [local(lo, mid)] if self.params.overlap else []
        back = []
        for c, (buf, tr) in enumerate(out):
            recv_x, recv_meta = wait_all_to_all(buf, tr)
            recv_experts = recv_meta[:, width:].detach().round().long()
            rows = self._experts(recv_x, recv_experts, recv_meta[:, :width], impl)
            back.append(launch_all_to_all(rows, None, sends[c], recvs[c], group))
        if self.params.overlap:
            parts.append(local(mid, hi))
        parts = [wait_all_to_all(buf, tr)[0] for buf, tr in back] + parts
        if not self.params.overlap:
            parts.append(local(lo, hi))
        # Back into send order: chunk rows to their places, this device's rows in between.
        order = torch.cat([*index, torch.arange(lo, hi, device=send_x.device)])
        return torch.cat(parts)[torch.argsort(order)]

    def _count(self, tokens: int, opens: torch.Tensor, send_splits: list[int], x: torch.Tensor) -> None:
        rows = sum(send_splits)
        remote = rows - send_splits[self.ep.rank]
        s = self.stats
        s.tokens += tokens
        s.rows += rows
        s.remote_rows += remote
        s.bytes += remote * x.shape[1] * x.element_size() * 2  # there and back
        # Per-device rows are exactly the opening choices; only per-expert rows need the count.
        s.device_visits += rows if self.per_device else int(opens.sum())
