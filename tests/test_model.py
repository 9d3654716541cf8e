"""The transformer: causal, layer layout from the recipe, parameter counts that add up."""

import torch

from moelight.model.build import build_model, count_parameters, flops_per_token
from moelight.model.moe_layer import MoELayer
from moelight.model.transformer import SwiGLU
from moelight.recipe import load_recipe

SMALL = ["model.n_layers=4", "model.hidden_size=32", "model.n_heads=4", "model.expert_ffn_hidden_size=16"]


def test_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = build_model(load_recipe(None, SMALL)).eval()
    idx = torch.randint(0, 256, (2, 12))
    changed = idx.clone()
    changed[:, 8:] = torch.randint(0, 256, (2, 4))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_moe_every_shared_expert_and_untied_head():
    recipe = load_recipe(
        None,
        SMALL
        + [
            "model.moe_every=2",
            "model.shared_expert_ffn_hidden_size=24",
            "model.shared_expert_gate=true",
            "model.tie_embeddings=false",
        ],
    )
    model = build_model(recipe)
    kinds = [type(b.ffn) for b in model.blocks]
    assert kinds == [SwiGLU, MoELayer, SwiGLU, MoELayer]
    layer = model.moe_layers[0]
    assert layer.shared_expert.gate_proj.weight.shape == (24, 32) and layer.shared_expert_gate is not None
    assert model.lm_head is not None and model.lm_head.weight.data_ptr() != model.embed.weight.data_ptr()

    # The shared expert is added to the routed output with its sigmoid gate.
    x = torch.randn(5, 32)
    routed = layer.dispatcher(x, layer.router(x))
    want = routed + torch.sigmoid(layer.shared_expert_gate(x)) * layer.shared_expert(x)
    torch.testing.assert_close(layer(x), want)


def test_parameter_counts_add_up():
    recipe = load_recipe(None, SMALL)
    model = build_model(recipe)
    counts = count_parameters(model, recipe)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    per_expert = 3 * 32 * 16
    assert counts["experts"] == 4 * 8 * per_expert
    assert counts["active"] == counts["total"] - 4 * (8 - 2) * per_expert
    assert flops_per_token(model, recipe) > 6 * (counts["active"] - 260 * 32)


def test_aux_loss_collects_every_layers_router_losses():
    model = build_model(load_recipe(None, SMALL + ["router.z_loss_coef=0.1"]))
    model(torch.randint(0, 256, (2, 8)))
    per_layer = [sum(layer.aux_losses.values()) for layer in model.moe_layers]
    assert len(model.moe_layers[0].aux_losses) == 2
    torch.testing.assert_close(model.aux_loss(), torch.stack(per_layer).sum())
