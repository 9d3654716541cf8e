"""Every recipe in recipes/ loads and trains a few steps (tiny sizes, the recipe's own plugins)."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

from moelight.cli.main import main
from moelight.recipe import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))

# Recipes whose inputs are the user's own (a pretrained model, instruction data) get test stand-ins
# from a fixture of that recipe's own test module; listed here so none is silently left out.
NEEDS_USER_INPUTS = {
    "qwen-moe-c2r-sft.yaml",  # tests/test_hf_sft_recipe.py
    "qwen-moe-topk-sft.yaml",  # tests/test_hf_sft_recipe.py
    "llama-moe-c2r-sft.yaml",  # tests/test_llama_moe_sft_recipe.py
    "llama-moe-topk-sft.yaml",  # tests/test_llama_moe_sft_recipe.py
}


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"quickstart.yaml", "topk.yaml", "balanced.yaml", "c2r.yaml"} <= names


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", [p for p in RECIPES if p.name not in NEEDS_USER_INPUTS], ids=lambda p: p.name
)
def test_recipe_trains_a_few_steps(path, tmp_path, run_env):
    recipe = load_recipe(path)
    # Keep the recipe's plugins and expert layout (and its layer count when a collaboration profile
    # fixes it); shrink everything else.
    keep = ("model.num_experts", "model.top_k") + (("model.n_layers",) if recipe.profile.path else ())
    overrides = [o for o in TINY if not o.startswith(keep)]
    overrides += ["trainer.max_steps=3", f"trainer.out_dir={tmp_path / 'run'}"]
    if isinstance(recipe.trainer.devices, int) and recipe.trainer.devices > 1:
        # Multi-process recipes go through Lightning's launcher, which re-runs the command per rank.
        proc = subprocess.run(
            [sys.executable, "-m", "moelight", "fit", str(path), *overrides],
            capture_output=True,
            text=True,
            env=run_env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        assert main(["fit", str(path), *overrides]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists() or (
        tmp_path / "run" / "checkpoints" / "last"
    ).exists()
