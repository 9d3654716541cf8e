"""Weights from any checkpoint moelight reads: `model.init_from`, and the trained model in one
process that `moelight profile`, `eval` and `generate` run.

It sits above both `moelight.model` (moelight's own formats) and `moelight.hf` (a Hugging Face
directory converted tensor by tensor), which builds on `moelight.model`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from moelight.errors import MoelightError
from moelight.hf.importer import HFSource
from moelight.model.build import build_model, layer_contexts
from moelight.model.init_from import RECIPE_FILE, load_weights, open_checkpoint
from moelight.model.meta_params import parameters_on_meta
from moelight.model.weight_sources import WeightSource
from moelight.recipe import Recipe, merge, parse_overrides, read_recipe_dict, validate_recipe
from moelight.registry import routers

HF_CONFIG = "config.json"  # a Hugging Face checkpoint directory (no recipe.yaml beside it)


def open_weights(path: str | Path) -> WeightSource:
    """A reader of the weights at `path` (nothing read yet): a Hugging Face directory, converted
    tensor by tensor, or any of moelight's own formats (`moelight.model.init_from.open_checkpoint`)."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / HF_CONFIG).is_file() and not (p / RECIPE_FILE).is_file():
        return HFSource(p)
    return open_checkpoint(p)


def load_init_weights(model: torch.nn.Module, path: str) -> None:
    """Copy the weights at `path` into `model`, strictly: every parameter must be present with its
    shape, and nothing may be left over. Missing buffers (e.g. a balancing router's running bias)
    keep their initial values. Each parameter reads only the part this rank holds: its experts'
    rows, its FSDP2 chunk; parameters on the meta device are replaced by the loaded tensors."""
    with open_weights(path) as source:
        load_weights(model, source, f"model.init_from {path}")


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
    with open_weights(path) as source:
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
