"""The dispatcher contract: `(x, routing) -> y`, counting what it sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from moelight.errors import ConfigError
from moelight.moe.experts import ExpertWeights
from moelight.moe.layer_context import LayerContext
from moelight.moe.routing import PluginParams, Routing


@dataclass
class ExpertParallelContext:
    """Where this rank sits in the expert-parallel group. Single process: size 1, group None."""

    rank: int = 0
    size: int = 1
    group: object | None = None  # torch.distributed.ProcessGroup when size > 1


@dataclass
class DispatchStats:
    """Counters accumulated over a step; the training module logs and resets them.

    rows: rows sent to the all2all (self included); remote_rows: rows that left the device;
    bytes: bytes that left the device, both directions; device_visits: sum over tokens of the
    number of distinct devices holding the token's experts.
    """

    tokens: int = 0
    rows: int = 0
    remote_rows: int = 0
    bytes: int = 0
    device_visits: int = 0

    def reset(self) -> None:
        self.tokens = self.rows = self.remote_rows = self.bytes = self.device_visits = 0


class Dispatcher(nn.Module):
    """Runs the experts on the tokens a `Routing` selected and combines the results.

    Built with `(params, ctx, experts, ep)`: its `Params`, the `LayerContext`, the layer's
    `ExpertWeights` (owned by the layer: held here without registering them twice) and the
    `ExpertParallelContext`. A dispatcher that sets `single_device = True` is refused, with a
    recipe error, under expert parallelism.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    single_device: ClassVar[bool] = False
    # Under parallel.fsdp=true the expert weights are FSDP2 shards, gathered while the MoE layer
    # calls the dispatcher (ExpertWeights.forward); a dispatcher that keeps its own references to
    # weight tensors, or that is untested there, sets this False and is refused with a recipe error.
    fsdp_compatible: ClassVar[bool] = True

    def __init__(
        self,
        params: PluginParams,
        ctx: LayerContext,
        experts: ExpertWeights,
        ep: ExpertParallelContext | None = None,
    ):
        super().__init__()
        self.params = params
        self.ctx = ctx
        object.__setattr__(self, "experts", experts)  # owned by the MoE layer
        self.ep = ep or ExpertParallelContext()
        self.stats = DispatchStats()
        if self.single_device and self.ep.size > 1:
            name = getattr(self, "plugin_name", type(self).__name__)
            raise ConfigError(
                "dispatcher.name",
                f"{name!r} runs on one device; with parallel.expert_parallel > 1 use 'grouplocal'",
            )

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
