"""`moelight fit --help` is short and complete: every recipe field by section with its type, this
recipe's value and description, the chosen router's and dispatcher's own parameters; no Lightning
import (so it is quick); `--help-trainer` keeps LightningCLI's full list. Errors come first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from moelight.cli.main import main
from moelight.recipe import Recipe, load_recipe
from moelight.registry import routers

ROOT = Path(__file__).resolve().parents[1]


def help_of(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(["fit", *argv, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("recipe", [None, "recipes/c2r.yaml", "recipes/balanced.yaml"])
def test_help_lists_every_recipe_field_in_under_150_lines(recipe, capsys):
    args = [str(ROOT / recipe)] if recipe else []
    text = help_of(capsys, *args)
    assert len(text.splitlines()) < 150
    r = load_recipe(ROOT / recipe if recipe else None)
    for section in ("model", "data", "optim", "trainer", "parallel", "profile"):
        for name in type(getattr(r, section)).model_fields:
            assert f"  {section}.{name}: " in text, f"{section}.{name} missing"
    for name in routers.get(r.router["name"]).Params.model_fields:
        assert f"  router.{name}: " in text
    assert "dict[str, Any]" not in text and "seed: int = " in text
    # the README's fields the old help omitted
    for key in ("parallel.expert_parallel", "trainer.out_dir", "trainer.on_nonfinite"):
        assert f"  {key}: " in text


def test_help_shows_the_recipe_values_with_overrides(capsys):
    text = help_of(capsys, str(ROOT / "recipes/c2r.yaml"), "router.top_t=5", "--model.n_layers", "3")
    assert "router.top_t: int = 5" in text and "model.n_layers: int = 3" in text
    assert "router.collaborators: profile|placement|online = " in text  # a Literal, spelled out


def test_help_imports_no_lightning():
    code = "import sys; from moelight.cli.main import main; main(['fit', '--help']); print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_help_trainer_is_lightnings_full_list(capsys):
    capsys.readouterr()
    assert main(["fit", "--help-trainer"]) == 0
    text = capsys.readouterr().out
    assert "--trainer.max_time" in text and "--trainer.callbacks" in text


def test_every_trainer_field_of_the_recipe_is_in_the_help():
    """Guard for new recipe fields: the help walks the model tree, so a new field shows up."""
    from moelight.cli.fit_help import help_text

    text = help_text(Recipe(), None)
    for name in type(Recipe().trainer).model_fields:
        assert f"trainer.{name}:" in text
