"""The public plugin API: everything a router or dispatcher plugin needs, and all it should import.

Contracts (`Router`, `Routing`, `Dispatcher`, `LayerContext`, `ExpertWeights`), the registries,
the standard routing math and parameters, gate networks, the selection-only expert bias,
collaboration lists, and the kernels and expert-parallel all_to_all a dispatcher may reuse. The
checks a plugin's tests run are in `moelight.testing`.
"""

from moelight.c2r.collaboration import coactivation_counts, collaborators_from_counts, is_collaborator_list
from moelight.errors import ConfigError, MoelightError
from moelight.kernels import KernelMode, select_impl
from moelight.kernels.combine import combine_rows
from moelight.kernels.counting_sort import counting_sort
from moelight.kernels.permute import gather_rows
from moelight.kernels.row_plan import row_plan
from moelight.kernels.token_slots import token_slots
from moelight.moe.dispatch import Dispatcher, DispatchStats, ExpertParallelContext
from moelight.moe.expert_bias import (
    record_expert_load,
    register_expert_bias,
    update_expert_bias,
)
from moelight.moe.experts import ExpertWeights
from moelight.moe.gate_network import GateNetwork, GateNoise, build_gate
from moelight.moe.layer_context import LayerContext
from moelight.moe.recompute import recomputing
from moelight.moe.router_losses import (
    LoadMembership,
    Score,
    balance_probs,
    combine_weights,
    cv_balance_loss,
    cv_squared,
    expert_counts,
    load_balancing_loss,
    router_scores,
    smooth_load,
    standard_aux_losses,
    standard_routing,
    z_loss,
)
from moelight.moe.routing import PluginParams, Router, Routing
from moelight.moe.standard_router import StandardRoutingParams, apply_route_scale, finish_routing
from moelight.parallel.all_to_all import all_to_all_counts
from moelight.parallel.all_to_all import launch as launch_all_to_all
from moelight.parallel.all_to_all import wait as wait_all_to_all
from moelight.registry import dispatchers, routers

__all__ = [
    "ConfigError",
    "DispatchStats",
    "Dispatcher",
    "ExpertParallelContext",
    "ExpertWeights",
    "GateNetwork",
    "GateNoise",
    "KernelMode",
    "LayerContext",
    "LoadMembership",
    "MoelightError",
    "PluginParams",
    "Router",
    "Routing",
    "Score",
    "StandardRoutingParams",
    "all_to_all_counts",
    "apply_route_scale",
    "balance_probs",
    "build_gate",
    "coactivation_counts",
    "collaborators_from_counts",
    "combine_rows",
    "combine_weights",
    "counting_sort",
    "cv_balance_loss",
    "cv_squared",
    "dispatchers",
    "expert_counts",
    "finish_routing",
    "gather_rows",
    "is_collaborator_list",
    "launch_all_to_all",
    "load_balancing_loss",
    "record_expert_load",
    "recomputing",
    "register_expert_bias",
    "router_scores",
    "routers",
    "row_plan",
    "select_impl",
    "smooth_load",
    "standard_aux_losses",
    "standard_routing",
    "token_slots",
    "update_expert_bias",
    "wait_all_to_all",
    "z_loss",
]
