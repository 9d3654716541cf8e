"""The `balanced` router (noisy_cv and bias) against plain-torch references written here."""

from __future__ import annotations

import math

import pytest
import torch

from moelight.api import ConfigError, LayerContext, routers
from moelight.testing import check_router

D, E, K, T = 16, 8, 2, 48


def build(k: int = K, **params):
    torch.manual_seed(0)
    ctx = LayerContext(hidden_size=D, num_experts=E, top_k=k, layer_index=0)
    return routers.build({"name": "balanced", **params}, ctx)


def cv2(values: list[float]) -> float:
    """Squared coefficient of variation with the unbiased variance, as Shazeer et al."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return var / (mean * mean + 1e-10)


def topk_softmax_reference(logits: torch.Tensor, k: int):
    """Per token: the k largest logits, softmax over those k only."""
    experts, weights = [], []
    for row in logits.detach().double():
        ids = sorted(range(E), key=lambda i: -float(row[i]))[:k]
        top = [float(row[i]) for i in ids]
        z = sum(math.exp(v) for v in top)
        experts.append(ids)
        weights.append([math.exp(v) / z for v in top])
    return experts, weights


# --- noisy_cv ------------------------------------------------------------------------------


def test_noisy_cv_eval_is_deterministic_topk_softmax_and_cv_loss():
    router = build(balance_loss_coef=0.5).eval()
    x = torch.randn(T, D)
    a, b = router(x), router(x)
    assert torch.equal(a.experts, b.experts) and torch.equal(a.weights, b.weights)
    logits = x @ router.gate.weight.T
    torch.testing.assert_close(a.logits, logits)
    experts, weights = topk_softmax_reference(logits, K)
    assert a.experts.tolist() == experts
    torch.testing.assert_close(a.weights, torch.tensor(weights, dtype=torch.float32))
    # Eval: load is the plain count of assignments.
    importance = [0.0] * E
    load = [0.0] * E
    for ids, ws in zip(experts, weights, strict=True):
        for i, w in zip(ids, ws, strict=True):
            importance[i] += w
            load[i] += 1
    expected = 0.5 * (cv2(importance) + cv2(load))
    assert a.aux_losses["load_balance"].item() == pytest.approx(expected, rel=1e-5)


def test_noisy_cv_training_loss_uses_the_normal_cdf_load():
    router = build(balance_loss_coef=1.0, noise_epsilon=0.05).train()
    with torch.no_grad():
        router.noise.weight.normal_(0, 0.3)  # make the noise std input-dependent
    x = torch.randn(T, D)
    torch.manual_seed(123)
    out = router(x)
    torch.manual_seed(123)
    eps = torch.randn(T, E)  # the router draws exactly one standard normal [T, E]

    with torch.no_grad():
        clean = (x @ router.gate.weight.T).double()
        std = torch.log1p(torch.exp((x @ router.noise.weight.T).double())) + 0.05
    noisy = clean + eps.double() * std
    experts, weights = topk_softmax_reference(noisy, K)
    assert out.experts.tolist() == experts
    torch.testing.assert_close(out.weights, torch.tensor(weights, dtype=torch.float32), rtol=1e-5, atol=1e-6)

    importance = [0.0] * E
    for ids, ws in zip(experts, weights, strict=True):
        for i, w in zip(ids, ws, strict=True):
            importance[i] += w
    # P(expert e is in the top k) = P(clean_e + noise_e > k-th largest of the OTHER noisy logits).
    load = [0.0] * E
    for t in range(T):
        for e in range(E):
            others = sorted((float(noisy[t, j]) for j in range(E) if j != e), reverse=True)
            z = (float(clean[t, e]) - others[K - 1]) / float(std[t, e])
            load[e] += 0.5 * (1 + math.erf(z / math.sqrt(2)))
    expected = cv2(importance) + cv2(load)
    assert out.aux_losses["load_balance"].item() == pytest.approx(expected, rel=1e-4)

    out.aux_losses["load_balance"].backward()
    assert router.gate.weight.grad.abs().sum() > 0
    assert router.noise.weight.grad.abs().sum() > 0  # the smooth load trains the noise too


def test_noisy_cv_training_noise_changes_routing():
    router = build().train()
    x = torch.randn(256, D)
    clean = router.eval()(x).experts
    router.train()
    noisy_a, noisy_b = router(x).experts, router(x).experts
    assert not torch.equal(noisy_a, clean)
    assert not torch.equal(noisy_a, noisy_b)


def test_noisy_cv_with_k_equal_e_falls_back_to_counts():
    router = build(k=E).train()
    out = router(torch.randn(T, D))
    assert out.experts.shape == (T, E)
    assert torch.isfinite(out.aux_losses["load_balance"])


# --- bias ------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
def test_bias_steers_selection_but_weights_use_unbiased_scores(score):
    router = build(method="bias", score=score).eval()
    x = torch.randn(T, D)
    before = router(x)
    router.expert_bias[3] = 100.0  # expert 3 now wins every token's selection
    after = router(x)
    assert (after.experts == 3).any(-1).all()
    assert not torch.equal(before.experts, after.experts)
    torch.testing.assert_close(after.logits, before.logits)  # raw logits are unbiased
    logits = (x @ router.gate.weight.T).detach().double()
    scores = torch.softmax(logits, -1) if score == "softmax" else torch.sigmoid(logits)
    for t in range(T):
        chosen = [float(scores[t, int(i)]) for i in after.experts[t]]
        expected = [c / sum(chosen) for c in chosen]  # renormalize defaults to True for bias
        assert after.weights[t].tolist() == pytest.approx(expected, rel=1e-5)


def test_bias_without_renormalisation_gives_raw_scores():
    router = build(method="bias", renormalize=False).eval()
    x = torch.randn(T, D)
    out = router(x)
    scores = torch.sigmoid((x @ router.gate.weight.T).detach())
    torch.testing.assert_close(out.weights, scores.gather(1, out.experts))


def test_bias_update_moves_toward_underloaded_experts():
    router = build(method="bias", bias_update_rate=0.1).train()
    x = torch.randn(T, D)
    out = router(x)
    router.after_optimizer_step()
    load = torch.tensor([float((out.experts == e).sum()) for e in range(E)])
    mean = T * K / E
    for e in range(E):
        expected = 0.1 if load[e] < mean else (-0.1 if load[e] > mean else 0.0)
        assert router.expert_bias[e].item() == pytest.approx(expected)
    # Not a parameter: no gradient, but saved with the checkpoint.
    assert "expert_bias" in router.state_dict()
    assert all(p is not router.expert_bias for p in router.parameters())
    # Eval forwards leave it alone.
    frozen = router.expert_bias.clone()
    router.eval()(x)
    assert torch.equal(router.expert_bias, frozen)


def test_bias_balances_a_skewed_router_over_steps():
    router = build(method="bias", bias_update_rate=0.005).train()
    with torch.no_grad():
        router.gate.weight.normal_(0, 0.1)
        router.gate.weight[0] += 0.1  # with inputs shifted by +0.5, expert 0 is strongly preferred
    x = torch.randn(512, D) + 0.5

    def imbalance() -> float:
        load = torch.bincount(router(x).experts.flatten(), minlength=E).float()
        return float(load.max() / load.mean())

    start = imbalance()
    for _ in range(60):  # one training forward per optimizer step
        router(x)
        router.after_optimizer_step()
    assert start > 2.5
    assert imbalance() < 1.2


def test_bias_update_uses_all_reduced_load(monkeypatch):
    import moelight.moe.expert_bias as expert_bias

    router = build(method="bias", bias_update_rate=1.0).train()
    # Pretend another rank saw E*T tokens all on expert 5: the global load makes 5 the only
    # overloaded expert, whatever this rank saw.
    monkeypatch.setattr(expert_bias.dist, "is_initialized", lambda: True)

    def fake_all_reduce(t):
        t[5] += 10_000

    monkeypatch.setattr(expert_bias.dist, "all_reduce", fake_all_reduce)
    router(torch.randn(T, D))
    router.after_optimizer_step()
    assert router.expert_bias[5].item() == -1.0
    assert (router.expert_bias[torch.arange(E) != 5] == 1.0).all()


def test_method_specific_params_are_checked():
    with pytest.raises(ConfigError, match="bias_update_rate only apply to method: bias"):
        build(method="noisy_cv", bias_update_rate=0.1)
    with pytest.raises(ConfigError, match="noise_epsilon only apply to method: noisy_cv"):
        build(method="bias", noise_epsilon=0.1)
    with pytest.raises(ConfigError, match="router.method"):
        build(method="sinkhorn")


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"noise_epsilon": 0.1, "z_loss_coef": 1e-3},
        {"method": "bias"},
        {"method": "bias", "score": "softmax"},
    ],
)
def test_keeps_the_router_contract(params):
    check_router("balanced", params)
