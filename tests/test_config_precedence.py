"""The README's precedence: recipe file < --config files < the command line (a.b=value,
--a.b value, --trainer.* flags), in every order of `--config`, `--trainer.*` and overrides;
--print_config, --print-recipe and the Trainer that is built all agree."""

from __future__ import annotations

import contextlib
import io
import itertools

import pytest
import yaml

from moelight.cli.fit_args import split_fit_args
from moelight.cli.lightning_cli import MoelightCLI
from moelight.cli.main import main
from moelight.recipe import load_recipe


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> str:
    """`moelight fit --print_config > run.yaml`: every value spelled out (max_steps 300, lr 3e-3)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["fit", "--print_config"]) == 0
    data = yaml.safe_load(out.getvalue())
    assert data["trainer"]["max_steps"] == 300 and data["optim"]["lr"] == 0.003
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(out.getvalue())
    return str(path)


def printed(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(["fit", *argv]) == 0
    return yaml.safe_load(capsys.readouterr().out)


ITEMS = {
    "config": ["--config", "CONFIG"],
    "recipe flag": ["--trainer.max_steps", "7"],  # a recipe field: a recipe override
    "lightning flag": ["--trainer.max_time", "00:00:05:00"],  # a Trainer argument the recipe lacks
    "override": ["optim.lr=0.005"],
}


@pytest.mark.parametrize("order", list(itertools.permutations(ITEMS)), ids="|".join)
def test_command_line_beats_config_in_every_order(order, config_file, capsys):
    argv = [a.replace("CONFIG", config_file) for item in order for a in ITEMS[item]]
    cfg = printed(capsys, [*argv, "--print_config"])
    assert cfg["trainer"]["max_steps"] == 7
    assert cfg["trainer"]["max_time"] == "00:00:05:00"
    assert cfg["optim"]["lr"] == 0.005


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["config", "recipe flag", "override"])), ids="|".join
)
def test_print_recipe_and_the_trainer_agree(order, config_file, capsys):
    argv = [a.replace("CONFIG", config_file) for item in order for a in ITEMS[item]]
    recipe = printed(capsys, [*argv, "--print-recipe"])
    assert recipe["trainer"]["max_steps"] == 7 and recipe["optim"]["lr"] == 0.005
    args = split_fit_args(argv)
    cli = MoelightCLI(load_recipe(args.recipe, args.overrides), args.lightning, overrides=args.overrides)
    assert cli.trainer.max_steps == 7  # what would train, not only what is printed
    assert cli.model.recipe.optim.lr == 0.005


def test_config_file_still_beats_the_recipe_file(tmp_path, config_file, capsys):
    """Without a command-line value, the --config file's value wins over the recipe's."""
    data = yaml.safe_load(open(config_file))
    data["trainer"]["max_steps"] = 11
    data["model"]["n_layers"] = 3
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    cfg = printed(capsys, ["--config", str(tmp_path / "c.yaml"), "--print_config"])
    assert cfg["trainer"]["max_steps"] == 11 and cfg["model"]["n_layers"] == 3
    recipe = printed(capsys, ["--config", str(tmp_path / "c.yaml"), "model.n_layers=2", "--print-recipe"])
    assert recipe["trainer"]["max_steps"] == 11 and recipe["model"]["n_layers"] == 2


def test_override_names_a_whole_plugin_over_config(tmp_path, config_file, capsys):
    """A router parameter on the command line refines the --config file's router."""
    recipe = printed(capsys, ["--config", config_file, "router.aux_loss_coef=0.05", "--print-recipe"])
    assert recipe["router"]["name"] == "topk" and recipe["router"]["aux_loss_coef"] == 0.05
