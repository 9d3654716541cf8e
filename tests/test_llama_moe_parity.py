"""LLaMA-MoE v1 in and out: an imported tiny checkpoint in the official on-disk format computes what
the official modeling code computes (tests/llama_moe_reference.py, an independent plain-torch
re-implementation of it), for both gate networks, with the score scale, the gate noise and the
balance loss, and for the C2R paper's patch at T = 1 and T = 3; export then import is bit-identical."""

from __future__ import annotations

import json
from pathlib import Path

import llama_moe_reference as official
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from moelight.cli.main import main
from moelight.hf.convert_dirs import export_from_checkpoint, import_to_dir
from moelight.hf.tiny import make_tiny_llama_moe_checkpoint
from moelight.load import load_init_weights
from moelight.model.build import build_model
from moelight.recipe import load_recipe

PAPER_LISTS = (
    Path(__file__).resolve().parents[1] / "data" / "c2r-paper" / "llama_moe_3.5b_2of8_collaborative_list.npy"
)
CASES = [
    pytest.param("linear", 1.0, None, id="linear"),
    pytest.param("mlp", 4.0, None, id="mlp-scale4"),
    pytest.param("mlp", 4.0, 1, id="c2r-T1"),
    pytest.param("mlp", 4.0, 3, id="c2r-T3"),
]


def checkpoint(tmp_path: Path, gate_network: str, scale: float, top_t: int | None) -> Path:
    lists = np.load(PAPER_LISTS)[:2].tolist() if top_t is not None else None
    return make_tiny_llama_moe_checkpoint(
        tmp_path / "hf", gate_network=gate_network, score_scale=scale, top_t=top_t, collaborative_list=lists
    )


def imported(hf_dir: Path, out: Path):
    result = import_to_dir(hf_dir, out)
    recipe = load_recipe(result.recipe_path)
    model = build_model(recipe)
    load_init_weights(model, recipe.model.init_from)
    return model, recipe


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 320, (3, 24), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("gate_network, scale, top_t", CASES)
def test_eval_logits_and_experts_equal_the_official_model(tmp_path, gate_network, scale, top_t):
    hf_dir = checkpoint(tmp_path, gate_network, scale, top_t)
    model, recipe = imported(hf_dir, tmp_path / "m")
    assert recipe.router["name"] == ("balanced" if top_t is None else "c2r")
    assert recipe.router_params().gate_network == gate_network and recipe.router_params().route_scale == scale
    ids = tokens()
    want, want_experts, _ = official.forward(hf_dir, ids)
    with torch.no_grad():
        got = model.eval()(ids)
    diff = (got - want).abs().max().item()
    print(f"llama_moe {gate_network} scale {scale} top_t {top_t}: eval logits max |diff| = {diff:.2e}")
    assert diff < 1e-4
    for layer, expected in zip(model.moe_layers, want_experts, strict=True):
        assert torch.equal(layer.last_routing.experts, expected)


@pytest.mark.parametrize("gate_network, scale, top_t", CASES)
def test_training_forward_with_noise_equals_the_official_model(tmp_path, gate_network, scale, top_t):
    """Training mode: the same Gaussian draws (one randn [tokens, E] per layer) give the same noisy
    selection, weights, logits and summed CV^2 balance loss (smooth load against the candidates)."""
    hf_dir = checkpoint(tmp_path, gate_network, scale, top_t)
    model, _ = imported(hf_dir, tmp_path / "m")
    ids = tokens(1)
    torch.manual_seed(7)
    want, want_experts, want_balance = official.forward(hf_dir, ids, training=True)
    torch.manual_seed(7)
    got = model.train()(ids)
    diff = (got - want).abs().max().item()
    balance = model.aux_loss()
    print(
        f"llama_moe {gate_network} top_t {top_t} training: logits max |diff| = {diff:.2e}, "
        f"balance loss {balance.item():.6f} vs official {want_balance.item():.6f}"
    )
    assert diff < 1e-4
    torch.testing.assert_close(balance, want_balance, rtol=1e-5, atol=1e-7)
    assert set(model.moe_layers[0].aux_losses) == {"load_balance"}
    for layer, expected in zip(model.moe_layers, want_experts, strict=True):
        assert torch.equal(layer.last_routing.experts, expected)
    # The noise matters: the noisy selection differs from the clean one somewhere.
    with torch.no_grad():
        model.eval()(ids)
    assert any(
        not torch.equal(layer.last_routing.experts, e) for layer, e in zip(model.moe_layers, want_experts)
    )


@pytest.mark.parametrize("gate_network, top_t", [("linear", None), ("mlp", None), ("mlp", 3)])
def test_export_then_import_is_bit_identical(tmp_path, gate_network, top_t):
    hf_dir = checkpoint(tmp_path, gate_network, 4.0, top_t)
    first = import_to_dir(hf_dir, tmp_path / "m")
    export_from_checkpoint(tmp_path / "m", tmp_path / "hf2", "llama_moe")
    original, exported = (
        load_file(str(hf_dir / "model.safetensors")),
        load_file(str(tmp_path / "hf2" / "model.safetensors")),
    )
    assert set(exported) == {k for k in original if not k.endswith("rotary_emb.inv_freq")}
    for key, tensor in exported.items():
        assert torch.equal(tensor, original[key]), key
    cfg = json.loads((tmp_path / "hf2" / "config.json").read_text())
    src = json.loads((hf_dir / "config.json").read_text())
    for field in (
        "model_type",
        "num_experts",
        "num_selects",
        "size_experts",
        "gate_network",
        "gate_add_noise",
        "score_scale_factor",
        "gate_balance_loss_weight",
        "gate_noise_epsilon",
        "intermediate_size",
    ):
        assert cfg[field] == src[field], field
    if top_t is not None:
        assert cfg["top_t"] == top_t
        cfg["collaborative_list"] = src["collaborative_list"]  # the export warns the user to add it
        (tmp_path / "hf2" / "config.json").write_text(json.dumps(cfg))
    second = import_to_dir(tmp_path / "hf2", tmp_path / "m2")
    assert second.imported.router == first.imported.router
    a, b = first.imported.state_dict, second.imported.state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_round_trip(tmp_path, capsys):
    hf_dir = checkpoint(tmp_path, "mlp", 4.0, None)
    assert main(["convert", "import", str(hf_dir), "--out", str(tmp_path / "m")]) == 0
    assert (
        main(
            ["convert", "export", str(tmp_path / "m"), "--out", str(tmp_path / "hf2"), "--arch", "llama_moe"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "imported llama_moe" in out and "modeling_llama_moe_hf.py" in " ".join(out.split())


@pytest.mark.parametrize(
    "change, field",
    [
        ({"gate_type": "SwitchBalancedGate"}, "gate_type"),
        ({"gate_network": "conv"}, "gate_network"),
        ({"calculator_type": "SwitchDropTokenCalculator"}, "calculator_type"),
        ({"multiply_gate_scores": False}, "multiply_gate_scores"),
        ({"gate_use_softmax": False}, "gate_use_softmax"),
        ({"size_experts": [[8, 24] + [16] * 6, [16] * 8]}, "size_experts"),
        ({"score_scale_factor": [4.0, 2.0]}, "score_scale_factor"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
        ({"attention_bias": True}, "attention_bias"),
        ({"top_t": 2}, "collaborative_list"),
    ],
)
def test_unsupported_config_exits_2_naming_the_field(tmp_path, capsys, change, field):
    hf_dir = checkpoint(tmp_path, "mlp", 4.0, None)
    cfg = json.loads((hf_dir / "config.json").read_text()) | change
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    assert main(["convert", "import", str(hf_dir), "--out", str(tmp_path / "m")]) == 2
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert field in err and "Traceback" not in captured.err + captured.out


def test_expert_shape_not_matching_the_config_exits_2(tmp_path, capsys):
    hf_dir = checkpoint(tmp_path, "mlp", 4.0, None)
    cfg = json.loads((hf_dir / "config.json").read_text()) | {"size_experts": [[8] * 8, [8] * 8]}
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    assert main(["convert", "import", str(hf_dir), "--out", str(tmp_path / "m")]) == 2
    assert "shape mismatch" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("top_t", [1, 2, 3, 4, 5, 6])
def test_c2r_router_matches_the_official_c2r_gate_on_many_tokens(top_t):
    """Router level, training mode, the paper's LLaMA-MoE lists: the same noisy selection, weights
    and balance loss as the official C2R gate, at every T the paper ran, and gradients too."""
    from moelight.api import LayerContext, routers

    lists = np.load(PAPER_LISTS)[5]
    ctx = LayerContext(
        hidden_size=16, num_experts=8, top_k=2, layer_index=5, collaborators=torch.from_numpy(lists).long()
    )
    params = {"name": "c2r", "top_t": top_t, "renormalize": True, "aux_loss_coef": 0.0, "gate_network": "mlp"}
    params |= {"noise": True, "balance_loss_coef": 0.01, "load_membership": "noise", "score_scale": 4.0}
    torch.manual_seed(0)
    router = routers.build(params, ctx).train()
    with torch.no_grad():
        router.noise.weight.normal_(0, 0.3)
        router.gate[2].weight.normal_(0, 1.0)
    sd = {
        "g.gate_network.0.weight": router.gate[0].weight,
        "g.gate_network.2.weight": router.gate[2].weight,
        "g.weight_noise.weight": router.noise.weight,
    }
    cfg = {"num_selects": 2, "num_experts": 8, "gate_network": "mlp", "gate_add_noise": True}
    cfg |= {"gate_noise_epsilon": 0.01, "gate_balance_loss_weight": 0.01}
    x = torch.randn(512, 16)
    torch.manual_seed(3)
    want_idx, want_scores, want_loss = official.gate(cfg, sd, "g", x, True, top_t, lists.tolist())
    torch.manual_seed(3)
    got = router(x)
    assert torch.equal(got.experts, want_idx)
    torch.testing.assert_close(got.weights, want_scores * 4.0)
    torch.testing.assert_close(got.aux_losses["load_balance"], want_loss, rtol=1e-5, atol=1e-8)
    # The same gradients reach the gate and the noise projection through the balance loss.
    grads = torch.autograd.grad(got.aux_losses["load_balance"], [router.gate[0].weight, router.noise.weight])
    want_grads = torch.autograd.grad(want_loss, [sd["g.gate_network.0.weight"], sd["g.weight_noise.weight"]])
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
    # Every second expert is one of the top-1 expert's first T collaborators.
    for first, second in got.experts.tolist():
        assert second in lists[first][:top_t].tolist()


def test_load_aware_c2r_is_not_exported_as_llama_moe(tmp_path, capsys):
    import yaml

    import_to_dir(checkpoint(tmp_path, "mlp", 4.0, 3), tmp_path / "m")
    recipe_path = tmp_path / "m" / "recipe.yaml"
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["router"] |= {"bias_update_rate": 1e-3, "balance_loss_coef": 0.0}
    recipe_path.write_text(yaml.safe_dump(recipe))
    args = ["convert", "export", str(tmp_path / "m"), "--out", str(tmp_path / "hf2"), "--arch", "llama_moe"]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "bias_update_rate" in err and "route differently" in err


@pytest.mark.parametrize(
    "variant, named",
    [({"penalty": 1.0}, "penalty"), ({"layer_top_t": [1, 2, 3, 1]}, "layer_top_t")],
)
def test_c2r_variants_are_not_exported_as_llama_moe(tmp_path, capsys, variant, named):
    import yaml

    import_to_dir(checkpoint(tmp_path, "mlp", 4.0, 3), tmp_path / "m")
    recipe_path = tmp_path / "m" / "recipe.yaml"
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["router"] |= {**variant, "balance_loss_coef": 0.0}
    recipe_path.write_text(yaml.safe_dump(recipe))
    args = ["convert", "export", str(tmp_path / "m"), "--out", str(tmp_path / "hf2"), "--arch", "llama_moe"]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert named in err and "route differently" in err
