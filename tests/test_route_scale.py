"""`route_scale` multiplies every standard router's combine weights; `score_scale` is its old name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from moelight.api import ConfigError, LayerContext, routers
from moelight.errors import MoelightError
from moelight.hf.router_swap import as_topk, topk_router_of
from moelight.recipe import load_recipe

D, E, K, T = 16, 8, 2, 64
ROOT = Path(__file__).resolve().parents[1]

ROUTERS = {
    "topk": {"name": "topk"},
    "balanced/noisy_cv": {"name": "balanced", "method": "noisy_cv"},
    "balanced/bias": {"name": "balanced", "method": "bias"},
    "c2r": {"name": "c2r", "top_t": 3, "collaborators": "placement"},
    "device_limited": {"name": "device_limited", "groups": "blocks", "num_groups": 4, "max_groups": 2},
}


def build(section: dict):
    torch.manual_seed(0)
    ctx = LayerContext(
        hidden_size=D, num_experts=E, top_k=K, layer_index=0, placement=torch.arange(E) // (E // 2)
    )
    return routers.build(section, ctx).eval()


@pytest.mark.parametrize("kind", sorted(ROUTERS))
@pytest.mark.parametrize("key", ["route_scale", "score_scale"])
def test_either_name_scales_the_weights_and_nothing_else(kind, key):
    plain, scaled = build(ROUTERS[kind]), build(ROUTERS[kind] | {key: 2.5})
    assert scaled.params.route_scale == 2.5
    x = torch.randn(T, D)
    a, b = plain(x), scaled(x)
    assert torch.equal(a.experts, b.experts)
    torch.testing.assert_close(b.weights, 2.5 * a.weights, rtol=0, atol=0)
    torch.testing.assert_close(b.logits, a.logits)


def test_both_names_at_once_is_an_error():
    with pytest.raises(ConfigError, match="route_scale and score_scale are one parameter"):
        build(ROUTERS["topk"] | {"route_scale": 2.0, "score_scale": 2.0})


def test_a_recipe_with_the_old_name_loads(tmp_path):
    """Recipes written before the rename (and by older `moelight convert import`) keep working."""
    old = yaml.safe_load((ROOT / "recipes" / "llama-moe-topk-sft.yaml").read_text())
    old["router"]["score_scale"] = old["router"].pop("route_scale")
    old["extends"] = str(ROOT / "recipes" / "llama-moe-c2r-sft.yaml")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    assert load_recipe(path).router_params().route_scale == 4.0
    # Extending a recipe that uses the new name, or overriding it, under the old name replaces it.
    child = tmp_path / "child.yaml"
    child.write_text(
        yaml.safe_dump(
            {"extends": str(ROOT / "recipes" / "llama-moe-c2r-sft.yaml"), "router": {"score_scale": 2.0}}
        )
    )
    assert load_recipe(child).router_params().route_scale == 2.0
    assert load_recipe(path, ["router.route_scale=3"]).router_params().route_scale == 3.0
    assert (
        load_recipe(None, ["router.name=c2r", "router.top_t=1", "router.score_scale=3"])
        .router_params()
        .route_scale
        == 3.0
    )


def test_export_to_a_top_k_gate_refuses_a_scale():
    with pytest.raises(MoelightError, match="route_scale 2.0"):
        as_topk({"name": "c2r", "top_t": 3, "score_scale": 2.0})
    with pytest.raises(MoelightError, match="mixtral has no weight scale"):
        topk_router_of({"name": "topk", "route_scale": 2.0}, "mixtral", 2)
    values, _ = topk_router_of({"name": "topk"}, "mixtral", 2)
    assert values["route_scale"] == 1.0
