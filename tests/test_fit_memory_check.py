"""`moelight fit` refuses, before building anything, a model or batch this machine cannot hold."""

from __future__ import annotations

import pytest

from moelight.cli.main import main
from moelight.memory.fit_check import check_fits
from moelight.recipe import load_recipe

ABSURD = {
    "model.n_layers": "100000",
    "model.vocab_size": "1000000000000",
    "model.hidden_size": "1048576",
    "model.num_experts": "10000000",
    "data.batch_size": "100000000",
}


@pytest.mark.parametrize("field", list(ABSURD))
def test_an_absurd_size_is_one_line_naming_the_field(field, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["fit", f"{field}={ABSURD[field]}", f"trainer.out_dir={out}", "trainer.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{field}: {ABSURD[field]} needs" in " ".join(err.split()) and "GiB" in err
    assert "Traceback" not in err
    assert not out.exists()  # nothing written


def test_force_and_the_recipe_flag_skip_the_check():
    recipe = load_recipe(None, ["data.batch_size=100000000"])
    assert check_fits(recipe, force=True) is None
    skip = load_recipe(None, ["data.batch_size=100000000", "trainer.skip_memory_check=true"])
    assert check_fits(skip) is None


def test_force_is_a_fit_flag():
    from moelight.cli.fit_args import split_fit_args

    args = split_fit_args(["recipe.yaml", "--force", "data.batch_size=4"])
    assert args.force and args.recipe == "recipe.yaml" and args.overrides == ["data.batch_size=4"]


def test_a_normal_recipe_passes():
    assert check_fits(load_recipe(None, [])) is not None
