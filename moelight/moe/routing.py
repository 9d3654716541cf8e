"""The router contract: hidden states in, a `Routing` out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from moelight.moe.layer_context import LayerContext
from moelight.moe.recompute import recomputing


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

    The trainer also calls, around each training step: `begin_step(step)` before the forward,
    and `after_optimizer_step()` after the optimizer has stepped; scalars passed to
    `log_scalar` during the step are logged as `router/<name>/l<layer>`. All three have
    defaults, so a router overrides only what it needs.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    step: int = 0  # optimizer steps taken before the current training forward

    def __init__(self, params: PluginParams, ctx: LayerContext):
        super().__init__()
        self.params = params
        self.ctx = ctx
        self._logged: dict[str, float | torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> Routing:  # pragma: no cover - interface
        raise NotImplementedError

    def begin_step(self, step: int) -> None:
        """Called before each training forward with the number of optimizer steps taken so far."""
        self.step = step

    def after_optimizer_step(self) -> None:
        """Called once after each optimizer step: update state that gradients do not train."""

    def discard_step(self) -> None:
        """Called instead of `after_optimizer_step` when the trainer dropped the step
        (`trainer.on_nonfinite: skip`): forget what this step's forwards recorded. (The trainer itself
        clears the expert load of `register_expert_bias`.)"""

    def log_scalar(self, name: str, value: float | torch.Tensor) -> None:
        """Report a scalar for this step; the trainer logs it as `router/<name>/l<layer index>`.
        The second run of a checkpointed forward (activation checkpointing) reports nothing."""
        if recomputing():
            return
        self._logged[name] = value.detach() if isinstance(value, torch.Tensor) else float(value)

    def pop_logged(self) -> dict[str, float | torch.Tensor]:
        """The scalars logged since the last call (the trainer calls this once per step)."""
        logged, self._logged = self._logged, {}
        return logged
