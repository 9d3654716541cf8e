"""`moelight convert export` never hides a routing change: a router HF cannot express is refused,
and `--router topk` exports a model that routes exactly like the checkpoint's weights under top-k."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from random_checkpoint import ROOT, TINY_MODEL, save_random_checkpoint

from moelight.cli.main import main
from moelight.eval.model import load_eval_model
from moelight.recipe import load_recipe

# Mixtral renormalises the k weights; the C2R model does too, so only the selection rule differs.
C2R = [*TINY_MODEL, "router.renormalize=true"]
TEXTS = ["def foo(x):", "import os", "class A(B):", "for i in range(3):"]


@pytest.fixture(scope="module")
def c2r_ckpt(tmp_path_factory):
    return save_random_checkpoint(
        ROOT / "recipes" / "c2r.yaml", tmp_path_factory.mktemp("guard") / "c2r.ckpt", C2R
    )


def scores(loaded) -> torch.Tensor:
    """Summed next-token log-probabilities of each text (bytes), in float64."""
    out = []
    for text in TEXTS:
        ids = torch.tensor([list(text.encode())])
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(ids)[0].double(), -1)
        out.append(logp[:-1].gather(-1, ids[0, 1:, None]).sum())
    return torch.stack(out)


def test_export_of_a_c2r_model_is_refused(c2r_ckpt, tmp_path, capsys):
    assert main(["convert", "export", str(c2r_ckpt), "--out", str(tmp_path / "hf"), "--arch", "mixtral"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'c2r' router" in err and "would route differently" in err and "--router topk" in err
    assert not (tmp_path / "hf" / "config.json").exists()


def test_router_topk_exports_top_k_routing_and_records_the_dropped_router(c2r_ckpt, tmp_path, capsys):
    hf = tmp_path / "hf"
    argv = ["convert", "export", str(c2r_ckpt), "--out", str(hf), "--arch", "mixtral", "--router", "topk"]
    assert main(argv) == 0
    record = json.loads((hf / "config.json").read_text())["moelight_export"]
    assert record["router_dropped"]["name"] == "c2r" and record["router_dropped"]["top_t"] == 3
    assert record["router_exported"]["name"] == "topk" and record["router_exported"]["renormalize"] is True
    assert "instead of the trained 'c2r' router" in " ".join(capsys.readouterr().out.split())

    # Back through import: the HF model routes like the checkpoint's weights under top-k, not C2R.
    assert main(["convert", "import", str(hf), "--out", str(tmp_path / "back")]) == 0
    back = load_eval_model(tmp_path / "back", device="cpu", dtype="float32")
    assert back.recipe.router["name"] == "topk"
    same = load_recipe(ROOT / "recipes" / "c2r.yaml", C2R).model_dump(mode="json")
    topk_recipe = tmp_path / "topk.yaml"
    topk_recipe.write_text(yaml.safe_dump({"model": same["model"], "router": record["router_exported"]}))
    as_topk = load_eval_model(c2r_ckpt, recipe=topk_recipe, device="cpu", dtype="float32")
    as_c2r = load_eval_model(c2r_ckpt, device="cpu", dtype="float32")
    torch.testing.assert_close(scores(back), scores(as_topk), rtol=0, atol=1e-6)
    assert (scores(back) - scores(as_c2r)).abs().max() > 1e-3


@pytest.mark.parametrize(
    "router, message",
    [
        ({"name": "c2r", "top_t": 3, "gate_network": "mlp"}, "mlp gate network"),
        ({"name": "balanced", "score_scale": 4.0}, "route_scale 4.0"),  # the old name, an alias
        ({"name": "device_limited", "route_scale": 2.5}, "route_scale"),
    ],
)
def test_router_topk_refuses_what_a_top_k_gate_cannot_keep(router, message):
    from moelight.errors import MoelightError
    from moelight.hf.router_swap import as_topk

    with pytest.raises(MoelightError, match=message):
        as_topk(router)
