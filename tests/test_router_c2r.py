"""The `c2r` router against a per-token python reference, on the paper's real collaborator lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moelight.api import ConfigError, LayerContext, routers
from moelight.testing import check_router

D = 32


def make_ctx(num_experts: int, top_k: int, collaborators=None, placement=None) -> LayerContext:
    return LayerContext(
        hidden_size=D,
        num_experts=num_experts,
        top_k=top_k,
        layer_index=0,
        collaborators=None if collaborators is None else torch.as_tensor(collaborators).long(),
        placement=placement,
    )


def build(ctx: LayerContext, **params):
    torch.manual_seed(0)
    router = routers.build({"name": "c2r", **params}, ctx)
    with torch.no_grad():
        router.gate.weight.normal_(0, 0.5)  # spread the scores so the constraint matters
    return router


def reference(logits, candidates_of, k: int, renormalize: bool = False):
    """Per token: top-1 e, then the k-1 best-scoring of `candidates_of(e)`; weights = softmax probs."""
    experts, weights = [], []
    for row in logits.detach().double():
        probs = torch.softmax(row, 0)
        e = int(probs.argmax())
        rest = sorted(candidates_of(e), key=lambda j: -float(probs[j]))[: k - 1]
        ids = [e, *rest]
        w = [float(probs[i]) for i in ids]
        if renormalize:
            w = [v / sum(w) for v in w]
        experts.append(ids)
        weights.append(w)
    return torch.tensor(experts), torch.tensor(weights, dtype=torch.float32)


def profile_candidates(lists, top_t: int):
    return lambda e: [int(j) for j in lists[e] if int(j) != e][:top_t]


# --- the paper's Qwen1.5-MoE lists: E = 60, k = 4, T = 30 -----------------------------------------


@pytest.mark.parametrize("layer", [0, 23])
def test_qwen_lists_only_pick_top1_collaborators(c2r_data, layer):
    lists = np.load(c2r_data / "qwen1.5_moe_a2.7b_collaborative_list.npy")[layer].astype(np.int64)
    ctx = make_ctx(60, 4, collaborators=lists)
    router = build(ctx, top_t=30).eval()
    x = torch.randn(400, D)
    out = router(x)
    assert out.experts.shape == (400, 4) and out.experts.dtype == torch.long
    for ids in out.experts.tolist():
        e, rest = ids[0], ids[1:]
        assert set(rest) <= set(lists[e][:30].tolist()), "picked an expert outside the first 30 collaborators"
        assert len(set(ids)) == 4
    ref_experts, ref_weights = reference(out.logits, profile_candidates(lists, 30), 4)
    assert torch.equal(out.experts, ref_experts)
    torch.testing.assert_close(out.weights, ref_weights, rtol=1e-5, atol=1e-7)
    # The constraint is active: plain top-4 differs on a good share of tokens.
    plain = out.logits.topk(4, -1).indices.sort(-1).values
    assert (plain != out.experts.sort(-1).values).any(-1).float().mean() > 0.2


def test_top_t_below_k_minus_1_is_a_config_error(c2r_data):
    lists = np.load(c2r_data / "qwen1.5_moe_a2.7b_collaborative_list.npy")[0]
    with pytest.raises(ConfigError) as info:
        build(make_ctx(60, 4, collaborators=lists), top_t=2)
    assert info.value.field == "router.top_t"
    assert "top_k - 1 (= 3)" in info.value.message
    with pytest.raises(ConfigError) as info:
        build(make_ctx(60, 4, collaborators=lists), top_t=60)
    assert info.value.field == "router.top_t"
    with pytest.raises(ConfigError, match="router.top_t"):  # pydantic: ge=1
        build(make_ctx(60, 4, collaborators=lists), top_t=0)
    with pytest.raises(ConfigError, match="router.top_t"):  # required
        build(make_ctx(60, 4, collaborators=lists))


def test_profile_source_needs_a_profile():
    with pytest.raises(ConfigError) as info:
        build(make_ctx(8, 2), top_t=2)
    assert info.value.field == "profile.path"
    assert "profile.path" in info.value.message


def test_bad_collaborator_lists_are_rejected():
    with pytest.raises(ConfigError, match="profile.path"):
        build(make_ctx(8, 2, collaborators=torch.zeros(8, 8, dtype=torch.long)), top_t=2)


# --- the paper's LLaMA-MoE lists: E = 8, k = 2 ------------------------------------------------------


@pytest.mark.parametrize("top_t", [1, 3, 7])
@pytest.mark.parametrize("renormalize", [False, True])
def test_llama_lists_match_reference(c2r_data, top_t, renormalize):
    lists = np.load(c2r_data / "llama_moe_3.5b_2of8_collaborative_list.npy")[5].astype(np.int64)
    router = build(make_ctx(8, 2, collaborators=lists), top_t=top_t, renormalize=renormalize).eval()
    out = router(torch.randn(300, D))
    ref_experts, ref_weights = reference(out.logits, profile_candidates(lists, top_t), 2, renormalize)
    assert torch.equal(out.experts, ref_experts)
    torch.testing.assert_close(out.weights, ref_weights, rtol=1e-5, atol=1e-7)
    if top_t == 1:  # the partner is always the top-1 expert's first collaborator
        assert torch.equal(out.experts[:, 1], torch.as_tensor(lists)[out.experts[:, 0], 0])
    if top_t == 7:  # every other expert is a candidate: plain top-2
        assert torch.equal(out.experts, out.logits.topk(2, -1).indices)


def test_the_expert_itself_is_skipped_wherever_the_list_puts_it():
    # Row e lists e first: the candidates must be the next top_t entries.
    lists = torch.stack([torch.roll(torch.arange(8), -e) for e in range(8)])  # [e, e+1, ...]
    router = build(make_ctx(8, 3, collaborators=lists), top_t=2).eval()
    out = router(torch.randn(200, D))
    e = out.experts[:, 0]
    assert torch.equal(
        out.experts[:, 1:].sort(-1).values, torch.stack([(e + 1) % 8, (e + 2) % 8], 1).sort(-1).values
    )


def test_single_expert_per_token_is_top1():
    lists = torch.stack([torch.roll(torch.arange(8), -e - 1) for e in range(8)])
    router = build(make_ctx(8, 1, collaborators=lists), top_t=1).eval()
    out = router(torch.randn(50, D))
    assert torch.equal(out.experts[:, 0], out.logits.argmax(-1))


def test_aux_losses_and_gradients(c2r_data):
    lists = np.load(c2r_data / "llama_moe_3.5b_2of8_collaborative_list.npy")[0].astype(np.int64)
    router = build(make_ctx(8, 2, collaborators=lists), top_t=2, aux_loss_coef=0.1, z_loss_coef=0.01).train()
    x = torch.randn(64, D)
    out = router(x)
    probs = torch.softmax(out.logits.detach().double(), -1)
    f = [sum(int(i) == e for row in out.experts for i in row) / (64 * 2) for e in range(8)]
    lb = 8 * sum(f[e] * float(probs[:, e].mean()) for e in range(8))
    assert out.aux_losses["load_balance"].item() == pytest.approx(0.1 * lb, rel=1e-5)
    z = float(torch.logsumexp(out.logits.detach().double(), -1).pow(2).mean())
    assert out.aux_losses["z_loss"].item() == pytest.approx(0.01 * z, rel=1e-5)
    (out.weights.sum() + sum(out.aux_losses.values())).backward()
    assert router.gate.weight.grad.abs().sum() > 0


# --- collaborators: placement -------------------------------------------------------------------------


def test_placement_keeps_every_token_on_one_device():
    placement = torch.arange(16) // 4  # 4 devices x 4 experts
    router = build(make_ctx(16, 4, placement=placement), top_t=10, collaborators="placement").eval()
    out = router(torch.randn(300, D))
    devices = placement[out.experts]
    assert (devices == devices[:, :1]).all()
    same_device = lambda e: [j for j in range(16) if placement[j] == placement[e] and j != e]  # noqa: E731
    ref_experts, _ = reference(out.logits, same_device, 4)
    assert torch.equal(out.experts, ref_experts)


def test_placement_orders_candidates_by_the_profile(c2r_data):
    counts = np.load(c2r_data / "llama_moe_base_collaboration.npy")[3]
    lists = np.argsort(-(counts + np.diag(np.full(8, -(10**9)))), axis=-1, kind="stable")
    placement = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])  # 2 devices x 4 experts
    router = build(
        make_ctx(8, 2, collaborators=lists, placement=placement), top_t=1, collaborators="placement"
    ).eval()
    out = router(torch.randn(300, D))

    def best_same_device_collaborator(e):
        return [next(int(j) for j in lists[e] if j != e and placement[j] == placement[e])]

    ref_experts, ref_weights = reference(out.logits, best_same_device_collaborator, 2)
    assert torch.equal(out.experts, ref_experts)
    torch.testing.assert_close(out.weights, ref_weights, rtol=1e-5, atol=1e-7)


def test_placement_with_unequal_groups():
    placement = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    router = build(make_ctx(8, 3, placement=placement), top_t=7, collaborators="placement").eval()
    out = router(torch.randn(300, D))
    devices = placement[out.experts]
    assert (devices == devices[:, :1]).all()
    assert len({int(d) for d in devices[:, 0]}) == 2
    assert all(len(set(row)) == 3 for row in out.experts.tolist())


def test_placement_group_too_small_is_a_config_error():
    placement = torch.arange(8) // 2  # groups of 2: at most 1 candidate
    with pytest.raises(ConfigError) as info:
        build(make_ctx(8, 3, placement=placement), top_t=4, collaborators="placement")
    assert info.value.field == "router.top_t"
    assert "2 experts" in info.value.message


@pytest.mark.parametrize(
    "params",
    [
        {"top_t": 8, "z_loss_coef": 1e-3},
        {"top_t": 3, "collaborators": "placement"},
        {"top_t": 8, "gate_network": "mlp", "noise": True, "balance_loss_coef": 0.01, "score_scale": 4.0},
        {"top_t": 8, "bias_update_rate": 1e-3},
    ],
)
def test_keeps_the_router_contract_on_the_paper_lists(c2r_data, params):
    lists = np.load(c2r_data / "qwen1.5_moe_a2.7b_collaborative_list.npy")[0].astype(np.int64)
    check_router("c2r", params, make_ctx(60, 4, collaborators=lists, placement=torch.arange(60) // 15))


def test_bias_and_the_cv_balance_loss_are_exclusive():
    with pytest.raises(ConfigError, match="set only one"):
        build(
            make_ctx(8, 2, placement=torch.arange(8) // 2),
            top_t=3,
            collaborators="placement",
            bias_update_rate=1e-3,
            balance_loss_coef=0.01,
        )
