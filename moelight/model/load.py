"""A trained model in one process, from a moelight checkpoint: what `moelight profile` and `moelight eval` run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from moelight.errors import MoelightError
from moelight.model.build import build_model, layer_contexts
from moelight.model.init_from import load_weights, open_checkpoint
from moelight.model.meta_params import parameters_on_meta
from moelight.recipe import Recipe, merge, parse_overrides, read_recipe_dict, validate_recipe
from moelight.registry import routers


@dataclass
class LoadedModel:
    recipe: Recipe
    model: torch.nn.Module
    source: str


def single_process_model(recipe: Recipe) -> torch.nn.Module:
    """All experts in this process, routed exactly as in training.

    Routers are built from the recipe's own contexts (its placement matters to
    `c2r` with `collaborators: placement`); experts and dispatch run locally (`sorted`).
    """
    contexts = layer_contexts(recipe)
    if recipe.parallel.expert_parallel == 1:
        return build_model(recipe, contexts=contexts)
    local = recipe.model_copy(
        update={
            "parallel": recipe.parallel.model_copy(update={"expert_parallel": 1, "placement": "contiguous"}),
            "dispatcher": {"name": "sorted"},
        }
    )
    model = build_model(local)
    for layer, ctx in zip(model.moe_layers, contexts, strict=True):
        layer.router = routers.build(recipe.router, ctx, field="router")
    return model


def load_checkpoint(
    path: str | Path, overrides: list[str] | None = None, recipe_path: str | Path | None = None
) -> LoadedModel:
    """The model of a moelight checkpoint with its weights, and its recipe (plus `overrides`).

    Reading goes through `model.init_from`'s reader (single-file Lightning .ckpt, sharded
    expert-parallel directory, or a converted directory with its recipe.yaml).
    `recipe_path` replaces the recipe the checkpoint carries (needed for a bare .safetensors).
    """
    with open_checkpoint(path) as source:
        recipe_dict = source.recipe if recipe_path is None else read_recipe_dict(recipe_path)
        if recipe_dict is None:
            raise MoelightError(
                f"{path} carries no recipe (a Lightning checkpoint's hyper_parameters['recipe'] or a "
                "converted directory's recipe.yaml): cannot tell which model to build (pass a recipe)"
            )
        recipe_dict = merge(recipe_dict, parse_overrides(overrides or []))
        model_section = dict(recipe_dict.get("model") or {})
        model_section["init_from"] = None  # the checkpoint's own weights are loaded below
        recipe = validate_recipe({**recipe_dict, "model": model_section})
        # Parameters on meta, then filled one tensor at a time: the model's memory, not twice it.
        with parameters_on_meta():
            model = single_process_model(recipe)
        load_weights(model, source, str(path))
    return LoadedModel(recipe, model, str(path))
