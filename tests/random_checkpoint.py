"""Random-init moelight checkpoints for tests that need a model, not a trained one."""

from __future__ import annotations

from pathlib import Path

import torch

from moelight.load import single_process_model
from moelight.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
# 4 MoE layers of 8 experts: the shape of the shipped quickstart profile that recipes/c2r.yaml uses.
TINY_MODEL = [
    "model.n_layers=4",
    "model.hidden_size=32",
    "model.n_heads=2",
    "model.ffn_hidden_size=64",
    "model.expert_ffn_hidden_size=32",
    "model.init_std=0.2",  # router logits far enough apart that routing rules visibly matter
    "data.seq_len=32",
]


def save_random_checkpoint(recipe_file: Path, out: Path, overrides: list[str], seed: int = 0) -> Path:
    """A Lightning-style .ckpt (state_dict under `model.`, recipe in hyper_parameters) of a random model."""
    recipe = load_recipe(recipe_file, overrides)
    torch.manual_seed(seed)
    model = single_process_model(recipe)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"recipe": recipe.model_dump(mode="json")},
        },
        out,
    )
    return out
