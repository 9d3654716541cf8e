"""Resuming as the README shows: `moelight fit` then `moelight fit recipes/quickstart.yaml --resume
last`, and `moelight fit R --resume last` (or the saved `recipe.yaml`) for every shipped
single-process recipe. The saved recipe spells out the router's and dispatcher's parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import TINY
from test_recipes_run import NEEDS_USER_INPUTS, RECIPES

from moelight.cli.main import main
from moelight.recipe import load_recipe
from moelight.registry import dispatchers, routers

ROOT = Path(__file__).resolve().parents[1]
SINGLE_PROCESS = [
    p
    for p in RECIPES
    if p.name not in NEEDS_USER_INPUTS and load_recipe(p).trainer.devices in (1, "1", "auto")
]


def tiny_for(path: Path | None) -> list[str]:
    """TINY, keeping what the recipe's collaboration profile fixes (its layers and experts)."""
    recipe = load_recipe(path)
    keep = ("model.num_experts", "model.top_k") + (("model.n_layers",) if recipe.profile.path else ())
    return [o for o in TINY if not o.startswith(keep)]


def test_readme_resume_line_after_the_default_run(run_env, tmp_path):
    """README: `moelight fit`, then `moelight fit recipes/quickstart.yaml --resume last`."""
    assert main(["fit", *TINY]) == 0  # out_dir: the default runs/quickstart (under tmp_path)
    saved = yaml.safe_load((tmp_path / "runs/quickstart/recipe.yaml").read_text())
    assert (
        main(["fit", str(ROOT / "recipes/quickstart.yaml"), *TINY, "trainer.max_steps=6", "--resume", "last"])
        == 0
    )
    assert saved["router"]["name"] == "topk"


def test_saved_recipe_spells_out_plugin_parameters(run_env, tmp_path):
    """recipe.yaml names every parameter of the router's and dispatcher's Params, defaults included."""
    assert main(["fit", *TINY, "trainer.max_steps=1", "trainer.val_check_interval=1"]) == 0
    saved = yaml.safe_load((tmp_path / "runs/quickstart/recipe.yaml").read_text())
    for section, registry in (("router", routers), ("dispatcher", dispatchers)):
        fields = set(registry.get(saved[section]["name"]).Params.model_fields)
        assert set(saved[section]) == fields | {"name"}
    assert "aux_loss_coef" in saved["router"]  # the README's failing resume named this one


@pytest.mark.slow
@pytest.mark.parametrize("path", SINGLE_PROCESS, ids=lambda p: p.name)
def test_every_shipped_recipe_resumes_with_resume_last(path, run_env, tmp_path):
    out = tmp_path / "run"
    tiny = tiny_for(path) + [f"trainer.out_dir={out}", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    assert main(["fit", str(path), *tiny]) == 0
    # the README's form: the same recipe file, --resume last
    assert main(["fit", str(path), *tiny, "trainer.max_steps=4", "--resume", "last"]) == 0
    # and the run's own saved recipe (what a user has when the recipe file has moved on)
    assert main(["fit", str(out / "recipe.yaml"), "trainer.max_steps=6", "--resume", "last"]) == 0
