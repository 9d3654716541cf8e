"""What every top-k-like router shares: six parameters and the routing tail that uses them.

A router whose `Params` derive from `StandardRoutingParams` chooses its experts its own way and
ends with `finish_routing(logits, scores, experts, self.params)`: combine weights from the
scores times `route_scale`, and the load-balancing and z-loss entries its coefficients ask for.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import AliasChoices, Field, model_validator

from moelight.moe.router_losses import Score, standard_routing
from moelight.moe.routing import PluginParams, Routing


class StandardRoutingParams(PluginParams):
    """Score function, weight renormalisation, weight scale and the two standard auxiliary losses."""

    score: Score = Field("softmax", description="score function over the router logits")
    renormalize: bool = Field(False, description="renormalise the k combine weights to sum 1")
    route_scale: float = Field(
        1.0,
        gt=0,
        # `score_scale` is the name this field had in the balanced and c2r routers: old recipes keep working.
        validation_alias=AliasChoices("route_scale", "score_scale"),
        description="multiplies the combine weights (DeepSeek's routed_scaling_factor, LLaMA-MoE's "
        "score_scale_factor; recipe alias: score_scale)",
    )
    aux_loss_coef: float = Field(0.01, ge=0, description="Switch/GShard load-balancing loss weight")
    z_loss_coef: float = Field(0.0, ge=0, description="router z-loss weight (ST-MoE)")
    freeze_gate: bool = Field(
        False,
        description="keep the router's parameters (gate, gate noise) as loaded: no gradient, no "
        "optimizer state (llama-moe's --freeze_gate)",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_scale_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "route_scale" in data and "score_scale" in data:
            raise ValueError(
                "route_scale and score_scale are one parameter (score_scale is its old name); set one"
            )
        return data


def finish_routing(
    logits: torch.Tensor,
    scores: torch.Tensor,
    experts: torch.Tensor,
    params: StandardRoutingParams,
    *,
    scale: bool = True,
) -> Routing:
    """The `Routing` of the chosen `experts` [T, k] under `params` (see `router_losses.standard_routing`).

    `scale=False` leaves out `route_scale`, for a router whose own loss needs the unscaled weights:
    it calls `apply_route_scale` after that loss.
    """
    routing = standard_routing(
        logits,
        scores,
        experts,
        score=params.score,
        renormalize=params.renormalize,
        aux_loss_coef=params.aux_loss_coef,
        z_loss_coef=params.z_loss_coef,
    )
    return apply_route_scale(routing, params) if scale else routing


def apply_route_scale(routing: Routing, params: StandardRoutingParams) -> Routing:
    """`routing` with its combine weights multiplied by `params.route_scale` (in place; returned)."""
    if params.route_scale != 1.0:
        routing.weights = routing.weights * params.route_scale
    return routing
