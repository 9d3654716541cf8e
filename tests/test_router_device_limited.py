"""The `device_limited` router against a per-token brute-force re-implementation of DeepSeek's rule."""

from __future__ import annotations

import itertools

import pytest
import torch

from moelight.api import ConfigError, LayerContext, routers
from moelight.testing import check_router

D, T = 16, 64


def build(num_experts: int, top_k: int, placement: torch.Tensor | None = None, **params):
    torch.manual_seed(0)
    ctx = LayerContext(
        hidden_size=D, num_experts=num_experts, top_k=top_k, layer_index=0, placement=placement
    )
    return routers.build({"name": "device_limited", **params}, ctx)


def reference(scores: torch.Tensor, group_of: list[int], m: int, n: int, k: int) -> list[list[int]]:
    """DeepSeek-V3 (section 2.1.2 / its released inference code), one token at a time:
    group score = sum of the group's n best scores; keep the m best groups; top-k inside them."""
    out = []
    groups = sorted(set(group_of))
    for row in scores.tolist():
        group_score = {
            g: sum(sorted((row[e] for e in range(len(row)) if group_of[e] == g), reverse=True)[:n])
            for g in groups
        }
        kept = sorted(groups, key=lambda g: -group_score[g])[:m]
        allowed = [e for e in range(len(row)) if group_of[e] in kept]
        out.append(sorted(sorted(allowed, key=lambda e: -row[e])[:k]))
    return out


@pytest.mark.parametrize(
    "e, k, groups, m, n, score",
    [
        (16, 2, "blocks4", 1, 2, "sigmoid"),  # DeepSeek-V3 style
        (16, 4, "blocks4", 2, 2, "softmax"),
        (16, 2, "placement4", 1, 1, "softmax"),  # DeepSeek-V2 style, devices of a shuffled placement
        (16, 4, "placement2", 1, 3, "sigmoid"),
        (8, 2, "blocks8", 3, 1, "softmax"),  # one expert per group: plain top-k over the best groups
    ],
)
def test_selection_matches_brute_force(e, k, groups, m, n, score):
    p = int(groups[-1])
    placement = None
    params = {"max_groups": m, "group_score_top": n, "score": score}
    if groups.startswith("blocks"):
        params |= {"groups": "blocks", "num_groups": p}
        group_of = [i // (e // p) for i in range(e)]
    else:
        gen = torch.Generator().manual_seed(1)
        placement = (torch.arange(e) // (e // p))[torch.randperm(e, generator=gen)]
        group_of = placement.tolist()
    router = build(e, k, placement, **params).eval()
    x = torch.randn(T, D)
    r = router(x)
    logits = x @ router.gate.weight.T
    probs = torch.softmax(logits, -1) if score == "softmax" else torch.sigmoid(logits)
    assert sorted_rows(r.experts) == reference(probs, group_of, m, n, k)
    distinct = [len({group_of[i] for i in row}) for row in r.experts.tolist()]
    assert max(distinct) <= m
    torch.testing.assert_close(r.weights, probs.gather(1, r.experts))
    torch.testing.assert_close(r.logits, logits)


def sorted_rows(experts: torch.Tensor) -> list[list[int]]:
    return [sorted(row) for row in experts.tolist()]


def test_all_groups_allowed_is_plain_topk():
    router = build(16, 4, groups="blocks", num_groups=4, max_groups=4).eval()
    x = torch.randn(T, D)
    probs = torch.softmax(router.gate(x).float(), -1)
    assert sorted_rows(router(x).experts) == sorted_rows(probs.topk(4, -1).indices)


def test_route_scale_and_renormalize_scale_the_weights():
    plain = build(16, 2, groups="blocks", num_groups=4, score="sigmoid").eval()
    scaled = build(16, 2, groups="blocks", num_groups=4, score="sigmoid", renormalize=True, route_scale=2.5)
    scaled.eval()
    x = torch.randn(T, D)
    a, b = plain(x), scaled(x)
    assert torch.equal(a.experts, b.experts)
    torch.testing.assert_close(b.weights, 2.5 * a.weights / a.weights.sum(-1, keepdim=True))


def skewed_router(**params):
    """Random tokens whose router favours experts 0-3 (group 0): a skewed load to balance."""
    router = build(16, 2, groups="blocks", num_groups=4, **params)
    with torch.no_grad():
        router.gate.weight.normal_(0, 0.5)
        router.gate.weight[:, 0] = 0
        router.gate.weight[:4, 0] = 2.0
    x = torch.randn(512, D)
    x[:, 0] = 1.0
    return router, x


def load_cv(experts: torch.Tensor) -> float:
    load = torch.bincount(experts.flatten(), minlength=16).float()
    return float(load.std() / load.mean())


def test_bias_shifts_selection_not_weights():
    router, x = skewed_router(max_groups=1, bias_update_rate=0.01)
    router.eval()
    unbiased = router(x)
    router.expert_bias.copy_(torch.linspace(-0.3, 0.3, 16))
    biased = router(x)
    probs = torch.softmax(router.gate(x).float(), -1)
    group_of = [i // 4 for i in range(16)]
    assert sorted_rows(unbiased.experts) == reference(probs, group_of, 1, 2, 2)
    assert sorted_rows(biased.experts) == reference(probs + router.expert_bias, group_of, 1, 2, 2)
    assert not torch.equal(biased.experts, unbiased.experts)
    torch.testing.assert_close(biased.weights, probs.gather(1, biased.experts))  # weights stay unbiased


def test_bias_updates_balance_a_skewed_load():
    router, x = skewed_router(max_groups=1, bias_update_rate=0.005)
    router.train()
    before = load_cv(router(x).experts)
    for _ in range(80):  # one training forward per optimizer step
        router(x)
        router.after_optimizer_step()
    after = load_cv(router.eval()(x).experts)
    assert router.expert_bias[:4].mean() < 0 < router.expert_bias[4:].mean()  # overloaded group pushed down
    assert after < 0.5 * before, (before, after)


def test_bias_is_saved_only_when_balancing():
    assert "expert_bias" not in build(16, 2, groups="blocks", num_groups=4).state_dict()
    assert "expert_bias" in build(16, 2, groups="blocks", num_groups=4, bias_update_rate=0.1).state_dict()


@pytest.mark.parametrize(
    "params, field, message",
    [
        ({"groups": "blocks", "num_groups": 4, "max_groups": 5}, "router.max_groups", "exceeds the 4"),
        (
            {"groups": "blocks", "num_groups": 8, "max_groups": 1},
            "router.max_groups",
            "cannot hold top_k = 4",
        ),
        ({"groups": "blocks", "num_groups": 5}, "router.num_groups", "must divide"),
        (
            {"groups": "blocks", "num_groups": 4, "group_score_top": 5},
            "router.group_score_top",
            "group size 4",
        ),
        ({"groups": "blocks"}, "router", "needs num_groups"),
        ({"num_groups": 4}, "router", "only applies to groups: blocks"),
    ],
)
def test_bad_params_are_one_line_errors(params, field, message):
    with pytest.raises(ConfigError, match=message) as err:
        build(16, 4, **params)
    assert field in str(err.value)
    assert "\n" not in str(err.value)


def test_every_group_choice_is_reachable():
    """With 4 groups of 4 and M = 2, each of the 6 group pairs wins for some token."""
    router = build(16, 4, groups="blocks", num_groups=4, max_groups=2).eval()
    r = router(torch.randn(2000, D) * 10)
    pairs = {tuple(sorted({e // 4 for e in row})) for row in r.experts.tolist()}
    assert set(itertools.combinations(range(4), 2)) <= pairs


def test_builds_on_the_meta_device_as_fit_does():
    placement = torch.arange(16) // 8  # contexts are made outside the meta block, as fit does
    with torch.device("meta"):
        router = build(16, 2, groups="blocks", num_groups=4)
        placed = build(16, 2, placement)
    assert router.gate.weight.is_meta
    assert router.group_of.tolist() == [i // 4 for i in range(16)]
    assert placed.group_of.tolist() == [i // 8 for i in range(16)]


@pytest.mark.parametrize(
    "params",
    [
        {"max_groups": 2},
        {
            "groups": "blocks",
            "num_groups": 4,
            "score": "sigmoid",
            "renormalize": True,
            "bias_update_rate": 1e-3,
        },
    ],
)
def test_keeps_the_router_contract(params):
    check_router("device_limited", params)
