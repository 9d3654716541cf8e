"""Activation checkpointing: equal loss and gradients, and what forwards record is recorded once.

The reference is the same model from the same seed without checkpointing. A checkpointed block
runs its forward twice (the second time in backward): a router's expert load, the dispatcher's
sent-row counters and the layer's aux losses must equal the single-run values.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import set_checkpoint_early_stop

from moelight.memory.live_bytes import peak_bytes
from moelight.model.build import build_model
from moelight.model.moe_layer import MoELayer
from moelight.recipe import load_recipe

SMALL = ["model.n_layers=3", "model.moe_every=1", "data.seq_len=32"]
ROUTERS = {
    "topk": ["router.name=topk", "router.jitter=0.1"],  # jitter: RNG must replay in the recompute
    "expert-bias": ["router.name=balanced", "router.method=bias", "router.bias_update_rate=0.01"],
    "noisy-c2r": [
        "router.name=c2r",
        "router.collaborators=placement",
        "router.top_t=3",
        "router.noise=true",
        "router.gate_network=mlp",
        "router.balance_loss_coef=0.01",
    ],
}


def step(mode: str, overrides: list[str], early_stop: bool = True):
    torch.manual_seed(0)
    recipe = load_recipe(None, [*SMALL, *overrides, f"trainer.activation_checkpointing={mode}"])
    model = build_model(recipe)
    model.train()
    forwards = []
    for layer in model.moe_layers:
        layer.register_forward_pre_hook(lambda mod, args: forwards.append(1))
    x = torch.randint(0, 260, (2, 32))
    y = torch.randint(0, 260, (2, 32))
    torch.manual_seed(1)
    # without early stop the recompute runs each checkpointed forward to its end (its counters too)
    with set_checkpoint_early_stop(early_stop):
        loss = model(x, targets=y, loss_chunk_tokens=16) + model.aux_loss()
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    layers = model.moe_layers
    return {
        "loss": loss.detach(),
        "grads": grads,
        "rows": [(m.dispatcher.stats.tokens, m.dispatcher.stats.rows) for m in layers],
        "aux": [{k: v.detach() for k, v in m.aux_losses.items()} for m in layers],
        "load": [getattr(m.router, "expert_load", None) for m in layers],
        "logged": [m.router.pop_logged() for m in layers],
        "forwards": len(forwards),
    }


@pytest.mark.parametrize("early_stop", [True, False], ids=["early-stop", "no-early-stop"])
@pytest.mark.parametrize("router", list(ROUTERS))
@pytest.mark.parametrize("mode", ["full", "moe", "attention"])
def test_checkpointing_changes_nothing_but_memory(mode, router, early_stop):
    ref, out = step("none", ROUTERS[router]), step(mode, ROUTERS[router], early_stop)
    assert torch.equal(out["loss"], ref["loss"])
    assert out["grads"].keys() == ref["grads"].keys()
    for name, grad in ref["grads"].items():
        torch.testing.assert_close(out["grads"][name], grad, rtol=1e-6, atol=1e-7, msg=name)
    assert out["rows"] == ref["rows"]  # the dispatcher counted each token once
    for a, b in zip(out["aux"], ref["aux"], strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    for a, b in zip(out["load"], ref["load"], strict=True):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
    for a, b in zip(out["logged"], ref["logged"], strict=True):  # router-logged scalars, once
        assert a.keys() == b.keys()
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    # the MoE FFN really ran again in backward where the mode recomputes it
    recomputed = mode in ("full", "moe")
    assert out["forwards"] == ref["forwards"] * (2 if recomputed else 1)


def test_expert_load_counts_each_token_once():
    """The expert bias's load equals the count of the routed experts (k per token), not twice it."""
    out = step("full", ROUTERS["expert-bias"])
    for load in out["load"]:
        assert float(load.sum()) == 2 * 32 * 2  # batch x seq_len x top_k


def test_checkpointing_lowers_the_measured_peak():
    recipe_args = ["model.n_layers=4", "data.seq_len=128"]
    peaks = {}
    for mode in ("none", "full"):
        torch.manual_seed(0)
        model = build_model(load_recipe(None, [*recipe_args, f"trainer.activation_checkpointing={mode}"]))
        x = torch.randint(0, 260, (8, 128))

        def work(model=model, x=x):
            model(x, targets=x, loss_chunk_tokens=256).backward()

        peaks[mode] = peak_bytes(work)
    assert peaks["full"] < 0.7 * peaks["none"]


def test_eval_forward_does_not_checkpoint():
    torch.manual_seed(0)
    model = build_model(load_recipe(None, [*SMALL, "trainer.activation_checkpointing=full"]))
    model.eval()
    calls = []
    layer = next(m for m in model.modules() if isinstance(m, MoELayer))
    layer.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(torch.randint(0, 260, (1, 8)))
    assert len(calls) == 1


def test_an_unknown_mode_is_a_recipe_error():
    from moelight.errors import ConfigError

    with pytest.raises(ConfigError, match="activation_checkpointing"):
        load_recipe(None, ["trainer.activation_checkpointing=everything"])
