"""`router.freeze_gate: true`: the router's parameters get no gradient and no optimizer state, and
stay as they were through training, while everything else trains."""

from __future__ import annotations

import pytest
import torch

from moelight.cli.fit import fit
from moelight.model.build import build_model
from moelight.recipe import load_recipe
from moelight.training.optim import build_optimizer

ROUTERS = {
    "topk": ["router.name=topk"],
    "balanced (LLaMA-MoE's noisy mlp gate)": [
        "router.name=balanced",
        "router.method=noisy_cv",
        "router.gate_network=mlp",
        "router.noise=true",
    ],
    "c2r": [
        "router.name=c2r",
        "router.top_t=1",
        "router.collaborators=placement",
        "parallel.placement=contiguous",
    ],
}


def router_names(model) -> set[str]:
    return {n for n, _ in model.named_parameters() if ".router." in n}


@pytest.mark.parametrize("router", list(ROUTERS))
@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_gate_has_no_gradient_and_no_optimizer_state(router, frozen):
    overrides = ["model.n_layers=2", "model.hidden_size=32", "model.n_heads=2", *ROUTERS[router]]
    recipe = load_recipe(None, [*overrides, f"router.freeze_gate={str(frozen).lower()}"])
    torch.manual_seed(0)
    model = build_model(recipe).train()
    names = router_names(model)
    assert names, "the router has parameters"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, recipe.optim, total_steps=10)["optimizer"]
    x = torch.randint(0, 256, (2, 16))
    for _ in range(2):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1))
        loss = loss + sum(v for layer in model.moe_layers for v in layer.last_routing.aux_losses.values())
        opt.zero_grad()
        loss.backward()
        params = dict(model.named_parameters())
        grads = {n: params[n].grad for n in names}
        opt.step()
    in_optimizer = {id(p) for g in opt.param_groups for p in g["params"]}
    with_state = {id(p) for p in opt.state}
    params = dict(model.named_parameters())
    for n in names:
        p = params[n]
        if frozen:
            assert grads[n] is None and not p.requires_grad, n
            assert id(p) not in in_optimizer and id(p) not in with_state, n
            assert torch.equal(p, before[n]), n
        else:
            assert id(p) in with_state, n
    moved_router = any(not torch.equal(params[n], before[n]) for n in names)
    assert moved_router != frozen
    # The experts train either way.
    assert any(not torch.equal(p, before[n]) for n, p in params.items() if "experts" in n)


def test_fit_with_frozen_gate_keeps_it_and_saves_no_state_for_it(tiny, tmp_path):
    """As the baseline is run: start from given weights (model.init_from), train with the gate frozen."""
    from safetensors.torch import save_file

    recipe = load_recipe(None, tiny)
    torch.manual_seed(1)
    start = {k: v.clone() for k, v in build_model(recipe).state_dict().items()}
    save_file(start, str(tmp_path / "start.safetensors"))
    overrides = [*tiny, "router.freeze_gate=true", f"model.init_from={tmp_path / 'start.safetensors'}"]
    assert fit(load_recipe(None, overrides)) == 0
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 4
    trained = {k.removeprefix("model."): v for k, v in last["state_dict"].items()}
    router = [k for k in start if ".router." in k]
    assert router
    for k in router:
        assert torch.equal(trained[k], start[k]), k
    assert any(not torch.equal(trained[k], start[k]) for k in start if "experts" in k)
    # AdamW holds state for exactly the parameters that train: all but the router's.
    model = build_model(recipe)
    n_router = sum(1 for n, _ in model.named_parameters() if ".router." in n)
    state = last["optimizer_states"][0]["state"]
    assert len(state) == sum(1 for _ in model.parameters()) - n_router
