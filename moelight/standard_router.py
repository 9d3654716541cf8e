"""What every top-k-like router shares: four parameters and the routing tail that uses them.

A router whose `Params` derive from `StandardRoutingParams` chooses its experts its own way and
ends with `finish_routing(logits, scores, experts, self.params)`: combine weights from the
scores, and the load-balancing and z-loss entries its coefficients ask for.
"""

from __future__ import annotations

import torch
from pydantic import Field

from moelight.router_losses import Score, standard_routing
from moelight.routing import PluginParams, Routing


class StandardRoutingParams(PluginParams):
    """Score function, weight renormalisation and the two standard auxiliary losses."""

    score: Score = Field("softmax", description="score function over the router logits")
    renormalize: bool = Field(False, description="renormalise the k combine weights to sum 1")
    aux_loss_coef: float = Field(0.01, ge=0, description="Switch/GShard load-balancing loss weight")
    z_loss_coef: float = Field(0.0, ge=0, description="router z-loss weight (ST-MoE)")


def finish_routing(
    logits: torch.Tensor, scores: torch.Tensor, experts: torch.Tensor, params: StandardRoutingParams
) -> Routing:
    """The `Routing` of the chosen `experts` [T, k] under `params` (see `router_losses.standard_routing`)."""
    return standard_routing(
        logits,
        scores,
        experts,
        score=params.score,
        renormalize=params.renormalize,
        aux_loss_coef=params.aux_loss_coef,
        z_loss_coef=params.z_loss_coef,
    )
