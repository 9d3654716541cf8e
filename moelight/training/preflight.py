"""Inputs a run reads, checked before anything in its run directory is written.

`model.init_from`, `profile.path` and `parallel.placement` are otherwise read only once the
Trainer sets up, after `recipe.yaml`, `logs/` and `tb/` exist in `out_dir`. Here they are read
once up front, on a model built on the meta device (no weights allocated): an unreadable or
ill-fitting file is one line, exit 2, and the run directory is untouched.
"""

from __future__ import annotations

import torch

from moelight.load import load_init_weights
from moelight.model.build import build_model, layer_contexts
from moelight.recipe import Recipe


def check_inputs(recipe: Recipe) -> None:
    """Raise MoelightError when an input file of `recipe` cannot be used."""
    contexts = layer_contexts(recipe)  # reads and checks profile.path and parallel.placement
    if recipe.model.init_from:
        with torch.device("meta"):
            model = build_model(recipe, contexts=contexts)
        load_init_weights(model, recipe.model.init_from)  # readable, and fits this model
