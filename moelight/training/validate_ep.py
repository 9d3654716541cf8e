"""Checks of an expert-parallel recipe, run once before any process is launched."""

from __future__ import annotations

import torch

from moelight.errors import ConfigError
from moelight.model.build import build_model, layer_contexts
from moelight.moe.dispatch import ExpertParallelContext
from moelight.recipe import Recipe


def check_expert_parallel_recipe(recipe: Recipe) -> None:
    """Build every layer as rank 0 of the EP group would, on the meta device (no memory).

    Errors a rank would hit in `configure_model` (a dispatcher that cannot run with P > 1, a
    placement that does not fit P) then come once, from the launching process, as ConfigErrors.
    """
    if recipe.parallel.fsdp:
        check_fsdp_dispatcher(recipe)
    contexts = layer_contexts(recipe)  # reads placement/profile files: outside the meta block
    ep = ExpertParallelContext(rank=0, size=recipe.parallel.expert_parallel)
    with torch.device("meta"):
        build_model(recipe, ep, contexts=contexts)


def check_fsdp_dispatcher(recipe: Recipe) -> None:
    from moelight.registry import dispatchers

    name = recipe.dispatcher["name"]
    cls = dispatchers.get(name)
    if not getattr(cls, "fsdp_compatible", True):
        allowed = [n for n in dispatchers.names() if getattr(dispatchers.get(n), "fsdp_compatible", True)]
        raise ConfigError(
            "dispatcher.name",
            f"{name!r} does not run under parallel.fsdp=true; allowed: {', '.join(allowed)}",
        )
