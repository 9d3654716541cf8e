"""The router contract: hidden states in, a `Routing` out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from moelight.layer_context import LayerContext


class PluginParams(BaseModel):
    """Base for every plugin's `Params`: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Routing:
    """Which experts each token visits and with what weight.

    experts: LongTensor[T, k] global expert ids; weights: float32[T, k] combine weights;
    logits: [T, E] raw router scores; aux_losses: named, already-weighted auxiliary losses.
    """

    experts: torch.Tensor
    weights: torch.Tensor
    logits: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


class Router(nn.Module):
    """Maps `x: [T, d]` to a `Routing`. Never touches expert weights or communication.

    Subclasses define a nested `Params(PluginParams)` and implement `forward`. The gate
    weight is conventionally `self.gate = nn.Linear(d, E, bias=False)` so that checkpoint
    converters find it.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams

    def __init__(self, params: PluginParams, ctx: LayerContext):
        super().__init__()
        self.params = params
        self.ctx = ctx

    def forward(self, x: torch.Tensor) -> Routing:  # pragma: no cover - interface
        raise NotImplementedError
