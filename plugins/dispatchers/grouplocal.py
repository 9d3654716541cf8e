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
  permute     gather_rows(x) -> all_to_all (counts first) -> counting_sort by local expert -> gather_rows
  experts     ExpertWeights.grouped
  combine     combine_rows (weighted, per received row) -> all_to_all back -> combine_rows (sum per token)
Autograd runs through both all_to_alls (and the one carrying the weights), so the backward is
the same exchange in reverse.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from pydantic import Field

from moelight.api import (
    ConfigError,
    Dispatcher,
    PluginParams,
    Routing,
    combine_rows,
    counting_sort,
    dispatchers,
    gather_rows,
    row_plan,
    select_impl,
    token_slots,
)


def _all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    """Variable-size all_to_all with autograd (functional collectives work on gloo and NCCL)."""
    import torch.distributed._functional_collectives as fc

    return fc.wait_tensor(fc.all_to_all_single_autograd(x.contiguous(), out_splits, in_splits, group))


@dispatchers.register("grouplocal")
class GroupLocalDispatcher(Dispatcher):
    """Group-local all2all: one row per (token, device) visited, experts run grouped on the receiver."""

    class Params(PluginParams):
        rows: Literal["per_device", "per_expert"] = Field(
            "per_device",
            description="per_device: one row per (token, device) (group-local); "
            "per_expert: one row per (token, expert), the usual EP baseline",
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
        send_x = gather_rows(x, row_token, token_rows, impl)
        # Weights and local ids travel together; ids are exact in float32 (< 2**24).
        send_meta = torch.cat([row_weights.view(num_rows, width), row_experts.float()], dim=1)

        # --- exchange: counts first, then rows and metadata.
        if p > 1:
            recv_counts = torch.empty_like(send_counts)
            dist.all_to_all_single(recv_counts, send_counts, group=self.ep.group)
            out_splits, in_splits = recv_counts.tolist(), send_splits
            recv_x = _all_to_all(send_x, out_splits, in_splits, self.ep.group)
            recv_meta = _all_to_all(send_meta, out_splits, in_splits, self.ep.group)
        else:
            recv_x, recv_meta = send_x, send_meta
        recv_weights = recv_meta[:, :width]
        recv_experts = recv_meta[:, width:].detach().round().long()

        # --- experts: (row, slot) pairs sorted by local expert, run grouped, folded back per row.
        pos, order, expert_counts = counting_sort(recv_experts, self.experts.num_local, impl)
        pair_index = pos.view(-1, width)
        xs = gather_rows(recv_x, order // width, pair_index, impl)
        ys = self.experts.grouped(xs, expert_counts)
        if xs.requires_grad and not ys.requires_grad:
            ys = ys + xs.sum() * 0  # no rows here: keep the graph so every rank's backward exchange runs
        out_rows = combine_rows(ys, pair_index, recv_weights, impl).to(x.dtype)

        # --- back: one row per received row; the source sums the rows of each token.
        back = _all_to_all(out_rows, in_splits, out_splits, self.ep.group) if p > 1 else out_rows
        y = combine_rows(back, token_rows, None, impl)

        self._count(t, opens, send_splits, x)
        return y.to(x.dtype)

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
