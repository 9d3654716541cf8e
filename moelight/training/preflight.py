"""Inputs a run reads, checked before anything in its run directory is written.

`model.init_from`, `profile.path` and `parallel.placement` are otherwise read only once the
Trainer sets up, after `recipe.yaml`, `logs/` and `tb/` exist in `out_dir`. Here they are read
once up front, on a model built on the meta device (no weights allocated): an unreadable or
ill-fitting file is one line, exit 2, and the run directory is untouched.
"""

from __future__ import annotations

import torch

from moelight.load import check_init_weights
from moelight.model.build import build_model, layer_contexts
from moelight.parallel.groups import check_world_size
from moelight.recipe import Recipe
from moelight.training.validate_ep import check_expert_parallel_recipe


def check_inputs(recipe: Recipe) -> None:
    """Raise MoelightError when an input file of `recipe` cannot be used."""
    contexts = layer_contexts(recipe)  # reads and checks profile.path and parallel.placement
    if recipe.model.init_from:
        with torch.device("meta"):
            model = build_model(recipe, contexts=contexts)
        # opens the file and checks names and shapes, reading no tensor: the launching process
        # must not hold the model (each rank later reads only its shard)
        check_init_weights(model, recipe.model.init_from)
    check_parallel(recipe)


def check_parallel(recipe: Recipe) -> None:
    """Expert parallelism and FSDP settings that cannot work (P not dividing the world size or
    the experts, a dispatcher that cannot run sharded): before the run directory is locked."""
    p = recipe.parallel
    if p.expert_parallel > 1 or p.fsdp:
        check_expert_parallel_recipe(recipe)
    t = recipe.trainer
    if isinstance(t.devices, int) and t.devices > 0 and isinstance(t.num_nodes, int):
        check_world_size(t.devices * t.num_nodes, p.expert_parallel)
