"""Recipes: defaults, extends, overrides, and one clear message per mistake."""

from pathlib import Path

import pytest
import yaml

from moelight.errors import ConfigError, MoelightError
from moelight.recipe import Recipe, load_recipe, parse_overrides

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_quickstart_file_is_the_embedded_default():
    # `moelight fit` without a file must train exactly what README's quickstart.yaml describes.
    quickstart, default = load_recipe(RECIPES / "quickstart.yaml"), Recipe()
    assert quickstart.model_dump(exclude={"router"}) == default.model_dump(exclude={"router"})
    assert quickstart.router["name"] == default.router["name"]
    assert quickstart.router_params() == default.router_params()


def test_extends_merges_and_overrides_take_both_forms(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump({"model": {"num_experts": 4, "top_k": 1}, "router": {"name": "topk", "jitter": 0.1}})
    )
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": "base.yaml", "model": {"hidden_size": 64}}))
    r = load_recipe(child, ["model.top_k=2", "--optim.lr", "1e-4", "--router.score=sigmoid"])
    assert (r.model.num_experts, r.model.top_k, r.model.hidden_size) == (4, 2, 64)
    assert r.optim.lr == pytest.approx(1e-4)
    assert r.router == {"name": "topk", "jitter": 0.1, "score": "sigmoid"}


def test_switching_plugin_drops_the_old_plugins_params(tmp_path):
    r = load_recipe(RECIPES / "topk.yaml", ["router.name=balanced"])
    assert r.router == {"name": "balanced"}


def test_override_values_are_yaml_scalars():
    assert parse_overrides(["a.b=3", "a.c=true", "--d", "null", "e=[1, 2]", "f=x"]) == {
        "a": {"b": 3, "c": True},
        "d": None,
        "e": [1, 2],
        "f": "x",
    }


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["model.hidden_sise=64"], "model.hidden_sise: unknown key"),
        (["trainer.max_steps=many"], "trainer.max_steps: Input should be a valid integer"),
        (["router.name=nope"], "router.name: unknown router 'nope'; installed routers: balanced, c2r"),
        (["dispatcher.name=nope"], "installed dispatchers:"),
        (["router.jiter=0.1"], "router.jiter: unknown key"),
        (["router.score=tanh"], "router.score: Input should be 'softmax' or 'sigmoid'"),
        (["model.top_k=9"], "top_k (9) must be <= num_experts (8)"),
        (["parallel.expert_parallel=3"], "parallel.expert_parallel (3) must divide model.num_experts (8)"),
        (["plugins=[no_such_module_xyz]"], "plugins.0: cannot import plugin module 'no_such_module_xyz'"),
    ],
)
def test_bad_recipe_names_the_field(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_recipe(None, overrides)
    assert needle in str(err.value)


def test_missing_recipe_file_and_self_extension(tmp_path):
    with pytest.raises(MoelightError, match="recipe not found"):
        load_recipe(tmp_path / "absent.yaml")
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(MoelightError, match="extends itself"):
        load_recipe(loop)


def test_relative_input_paths_resolve_against_the_recipe(tmp_path):
    (tmp_path / "corpus.txt").write_text("hello")
    (tmp_path / "r.yaml").write_text("data: {source: corpus.txt}\n")
    assert load_recipe(tmp_path / "r.yaml").data.source == str(tmp_path / "corpus.txt")
