"""C2R on an imported Qwen2-MoE: moelight's `c2r` router equals the paper's rule applied to the HF
router's own probabilities (computed here from the HF model's gate weight, independently)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="moelight[hf] extra not installed")

from moelight.hf.convert_dirs import import_to_dir  # noqa: E402
from moelight.hf.tiny import TINY_VOCAB, make_tiny_checkpoint  # noqa: E402
from moelight.load import load_init_weights  # noqa: E402
from moelight.model.build import build_model  # noqa: E402
from moelight.recipe import load_recipe  # noqa: E402

transformers.utils.logging.disable_progress_bar()

# The paper's Qwen1.5-MoE setting: 60 routed experts, 4 per token, T = 30 collaborators.
E, K, T = 60, 4, 30


def paper_rule(probs: torch.Tensor, collaborators: np.ndarray, top_t: int, k: int):
    """Per token: the top-1 expert e, then the k-1 most probable of e's first top_t collaborators."""
    experts, weights = [], []
    for p in probs:
        e = int(p.argmax())
        candidates = [c for c in collaborators[e].tolist() if c != e][:top_t]
        rest = sorted(candidates, key=lambda c: -float(p[c]))[: k - 1]
        chosen = [e, *rest]
        experts.append(chosen)
        weights.append([float(p[c]) for c in chosen])
    return torch.tensor(experts), torch.tensor(weights)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, c2r_data):
    root = tmp_path_factory.mktemp("c2r")
    hf_dir = make_tiny_checkpoint("qwen2_moe", root / "hf", seed=3, num_experts=E, num_experts_per_tok=K)
    result = import_to_dir(hf_dir, root / "moelight")
    # The paper's collaborator lists for the first two layers, given as a plain JSON list.
    lists = np.load(c2r_data / "qwen1.5_moe_a2.7b_collaborative_list.npy")[:2].astype(np.int64)
    (root / "collab.json").write_text(json.dumps({"collaborators": lists.tolist()}))
    recipe = load_recipe(
        result.recipe_path,
        [
            "router.name=c2r",
            f"router.top_t={T}",
            "router.renormalize=false",
            f"profile.path={root / 'collab.json'}",
        ],
    )
    model = build_model(recipe).eval()
    load_init_weights(model, recipe.model.init_from)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    return hf, model, lists


def hf_router_inputs(hf, idx: torch.Tensor) -> list[torch.Tensor]:
    captured = []
    hooks = [
        layer.mlp.gate.register_forward_hook(lambda m, args, out: captured.append(args[0].detach()))
        for layer in hf.model.layers
    ]
    try:
        with torch.no_grad():
            hf(idx)
    finally:
        for h in hooks:
            h.remove()
    return captured


def test_c2r_matches_paper_rule_on_hf_router_probabilities(setup):
    hf, model, lists = setup
    idx = torch.randint(0, TINY_VOCAB, (4, 32), generator=torch.Generator().manual_seed(0))
    inputs = hf_router_inputs(hf, idx)
    differs_from_topk = 0
    for layer_i, (x, moe) in enumerate(zip(inputs, model.moe_layers, strict=True)):
        gate = hf.model.layers[layer_i].mlp.gate.weight.detach()  # the HF router's own weight
        probs = torch.softmax(x.float() @ gate.float().t(), dim=-1)
        ref_experts, ref_weights = paper_rule(probs, lists[layer_i], T, K)
        with torch.no_grad():
            routing = moe.router(x)
        assert torch.equal(routing.experts, ref_experts)
        torch.testing.assert_close(routing.weights, ref_weights, rtol=1e-5, atol=1e-7)
        topk = probs.topk(K, dim=-1).indices
        differs_from_topk += int((routing.experts.sort(-1).values != topk.sort(-1).values).any(-1).sum())
    assert differs_from_topk > 0, "the test is vacuous: C2R picked plain top-k for every token"


def test_c2r_full_forward_first_layer(setup):
    """In a full forward the first MoE layer sees the same hidden states as HF's, so it routes the same."""
    hf, model, lists = setup
    idx = torch.randint(0, TINY_VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
    x = hf_router_inputs(hf, idx)[0]
    gate = hf.model.layers[0].mlp.gate.weight.detach()
    ref_experts, _ = paper_rule(torch.softmax(x @ gate.t(), dim=-1), lists[0], T, K)
    with torch.no_grad():
        model(idx)
    assert torch.equal(model.moe_layers[0].last_routing.experts, ref_experts)
