"""The `topk` router against plain-torch references written here."""

from __future__ import annotations

import pytest
import torch

from moelight.api import LayerContext, routers
from moelight.testing import check_router

D, E, K, T = 16, 8, 2, 64


def build(**params):
    torch.manual_seed(0)
    ctx = LayerContext(hidden_size=D, num_experts=E, top_k=K, layer_index=0)
    return routers.build({"name": "topk", **params}, ctx)


def reference(logits: torch.Tensor, score: str, renormalize: bool):
    """Per-token reference: sort the scores, keep k, optionally divide by their sum."""
    experts, weights = [], []
    for row in logits.detach().double():
        s = torch.softmax(row, 0) if score == "softmax" else torch.sigmoid(row)
        ids = sorted(range(E), key=lambda i: -float(s[i]))[:K]
        w = [float(s[i]) for i in ids]
        if renormalize:
            w = [v / sum(w) for v in w]
        experts.append(ids)
        weights.append(w)
    return torch.tensor(experts), torch.tensor(weights, dtype=torch.float32)


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("renormalize", [False, True])
def test_selection_and_weights_match_reference(score, renormalize):
    router = build(score=score, renormalize=renormalize).eval()
    x = torch.randn(T, D)
    out = router(x)
    logits = x @ router.gate.weight.T
    ref_experts, ref_weights = reference(logits, score, renormalize)
    assert out.experts.dtype == torch.long and out.experts.shape == (T, K)
    assert out.weights.dtype == torch.float32 and out.logits.dtype == torch.float32
    assert out.logits.shape == (T, E)
    assert torch.equal(out.experts, ref_experts)
    torch.testing.assert_close(out.weights, ref_weights, rtol=1e-5, atol=1e-6)
    if renormalize:
        torch.testing.assert_close(out.weights.sum(-1), torch.ones(T))


def switch_loss(logits: torch.Tensor, experts: torch.Tensor, score: str) -> float:
    """E * sum_e f_e * P_e with explicit loops."""
    logits = logits.detach().double()
    probs = torch.softmax(logits, -1) if score == "softmax" else torch.sigmoid(logits)
    probs = probs / probs.sum(-1, keepdim=True)
    total = 0.0
    for e in range(E):
        f = sum(int(i) == e for row in experts for i in row) / (T * K)
        total += f * float(probs[:, e].mean())
    return E * total


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_load_balancing_loss_value(score):
    router = build(score=score, aux_loss_coef=0.1).eval()
    x = torch.randn(T, D)
    out = router(x)
    assert set(out.aux_losses) == {"load_balance"}  # z_loss_coef is 0: no entry
    expected = 0.1 * switch_loss(out.logits, out.experts, score)
    assert out.aux_losses["load_balance"].item() == pytest.approx(expected, rel=1e-5)


def test_z_loss_value():
    router = build(aux_loss_coef=0.0, z_loss_coef=1e-3).eval()
    x = torch.randn(T, D) * 5
    out = router(x)
    assert set(out.aux_losses) == {"z_loss"}
    lse = [float(torch.log(torch.exp(row.double()).sum())) for row in out.logits.detach()]
    expected = 1e-3 * sum(v * v for v in lse) / T
    assert out.aux_losses["z_loss"].item() == pytest.approx(expected, rel=1e-5)


def test_jitter_only_in_training():
    router = build(jitter=0.3)
    x = torch.randn(T, D)
    router.eval()
    a, b = router(x), router(x)
    assert torch.equal(a.logits, b.logits)
    torch.testing.assert_close(a.logits, x @ router.gate.weight.T)
    router.train()
    c = router(x)
    assert not torch.allclose(c.logits, a.logits)
    # Multiplicative noise in [1-j, 1+j] on the input only.
    ratio_ok = (c.logits - a.logits).abs() <= 0.3 * (x.abs() @ router.gate.weight.abs().T) + 1e-6
    assert bool(ratio_ok.all())


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"score": "sigmoid", "renormalize": True, "z_loss_coef": 1e-3},
        {"jitter": 0.2, "aux_loss_coef": 0.0},
    ],
)
def test_keeps_the_router_contract(params):
    check_router("topk", params)


def test_aux_loss_gradient_matches_autograd_of_reference():
    router = build(aux_loss_coef=1.0).eval()
    x = torch.randn(T, D)
    out = router(x)
    (g,) = torch.autograd.grad(out.aux_losses["load_balance"], router.gate.weight)
    w = router.gate.weight.detach().double().requires_grad_(True)
    probs = torch.softmax(x.double() @ w.T, -1)
    f = torch.stack([(out.experts == e).sum() for e in range(E)]).double() / (T * K)
    ref = E * (f * probs.mean(0)).sum()
    (g_ref,) = torch.autograd.grad(ref, w)
    torch.testing.assert_close(g, g_ref.float(), rtol=1e-4, atol=1e-7)


def test_bad_params_are_rejected():
    from moelight.api import ConfigError

    with pytest.raises(ConfigError, match="router.score"):
        build(score="relu")
    with pytest.raises(ConfigError, match="unknown key"):
        build(top_t=3)
