"""The trainer's side of the router hooks: `begin_step`, `log_scalar` and `after_optimizer_step`."""

from __future__ import annotations

import torch

from moelight.model.moe_layer import MoELayer
from moelight.moe.expert_bias import discard_expert_load


def begin_router_step(layers: list[MoELayer], step: int) -> None:
    """Tell every router the number of optimizer steps taken before this training forward."""
    for layer in layers:
        layer.router.pop_logged()  # what eval forwards logged is not this step's
        layer.router.begin_step(step)


def router_scalars(layers: list[MoELayer]) -> dict[str, float | torch.Tensor]:
    """What the routers logged this step, as `router/<name>/l<layer index>`; clears it."""
    return {
        f"router/{name}/l{layer.ctx.layer_index}": value
        for layer in layers
        for name, value in layer.router.pop_logged().items()
    }


def after_optimizer_step(layers: list[MoELayer]) -> None:
    for layer in layers:
        layer.router.after_optimizer_step()


def discard_router_step(layers: list[MoELayer]) -> None:
    """The step was dropped (on_nonfinite: skip): routers forget what its forwards recorded, the
    expert load of an expert bias (register_expert_bias) included, and their own state."""
    for layer in layers:
        discard_expert_load(layer.router)
        layer.router.discard_step()
