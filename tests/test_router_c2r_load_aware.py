"""Load-aware C2R: the aux-loss-free expert bias steers C2R's selection (not its weights) and evens load."""

from __future__ import annotations

import pytest
import torch

from moelight.api import LayerContext, routers

D, E, K, T = 16, 16, 2, 512


def collaborator_lists(seed: int = 0) -> torch.Tensor:
    """Row i: the other experts in a random order, then i itself (as a profile's lists)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(E):
        others = torch.tensor([j for j in range(E) if j != i])
        rows.append(torch.cat([others[torch.randperm(E - 1, generator=gen)], torch.tensor([i])]))
    return torch.stack(rows)


PLACEMENT = (torch.arange(E) // 4)[torch.randperm(E, generator=torch.Generator().manual_seed(3))]


def build(collaborators: str, top_t: int, **params):
    torch.manual_seed(0)
    ctx = LayerContext(
        hidden_size=D,
        num_experts=E,
        top_k=K,
        layer_index=0,
        placement=PLACEMENT if collaborators == "placement" else None,
        collaborators=collaborator_lists() if collaborators == "profile" else None,
    )
    router = routers.build({"name": "c2r", "top_t": top_t, "collaborators": collaborators, **params}, ctx)
    with torch.no_grad():  # skewed: experts 0-3 favoured by every token
        router.gate.weight.normal_(0, 0.5)
        router.gate.weight[:, 0] = 0
        router.gate.weight[:4, 0] = 2.0
    return router


def skewed_tokens() -> torch.Tensor:
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(5))
    x[:, 0] = 1.0
    return x


def candidates_of(collaborators: str, top_t: int, e: int) -> list[int]:
    if collaborators == "profile":
        return [j for j in collaborator_lists()[e].tolist() if j != e][:top_t]
    return [j for j in range(E) if PLACEMENT[j] == PLACEMENT[e] and j != e][:top_t]


def reference(selection: torch.Tensor, collaborators: str, top_t: int) -> list[list[int]]:
    """C2R one token at a time on the (biased) selection scores."""
    out = []
    for row in selection.tolist():
        top1 = max(range(E), key=lambda e: row[e])
        cand = sorted(candidates_of(collaborators, top_t, top1), key=lambda j: -row[j])
        out.append([top1, *cand[: K - 1]])
    return out


def load_cv(experts: torch.Tensor) -> float:
    load = torch.bincount(experts.flatten(), minlength=E).float()
    return float(load.std() / load.mean())


@pytest.mark.parametrize("collaborators, top_t", [("profile", 1), ("profile", 3), ("placement", 3)])
def test_bias_shifts_selection_not_weights(collaborators, top_t):
    router = build(collaborators, top_t, bias_update_rate=0.01).eval()
    x = skewed_tokens()
    unbiased = router(x)
    router.expert_bias.copy_(torch.linspace(0.3, -0.3, E))
    biased = router(x)
    probs = torch.softmax(router.gate(x).float(), -1)
    assert unbiased.experts.tolist() == reference(probs, collaborators, top_t)
    assert biased.experts.tolist() == reference(probs + router.expert_bias, collaborators, top_t)
    assert not torch.equal(biased.experts, unbiased.experts)
    torch.testing.assert_close(biased.weights, probs.gather(1, biased.experts))
    # Evaluation never moves the bias.
    assert torch.equal(router.expert_bias, torch.linspace(0.3, -0.3, E))


@pytest.mark.parametrize("collaborators, top_t", [("profile", 1), ("placement", 3)])
def test_bias_lowers_load_cv_against_plain_c2r(collaborators, top_t):
    x = skewed_tokens()
    plain = build(collaborators, top_t).eval()
    aware = build(collaborators, top_t, bias_update_rate=0.005)
    assert torch.equal(plain.gate.weight, aware.gate.weight)
    aware.train()
    for _ in range(80):  # one training forward per optimizer step
        aware(x)
        aware.after_optimizer_step()
    cv_plain, cv_aware = load_cv(plain(x).experts), load_cv(aware.eval()(x).experts)
    # T = 1 couples each top-1 expert to one fixed partner, which caps what the bias can even out.
    assert cv_aware < 0.6 * cv_plain, (cv_plain, cv_aware)


def test_no_bias_buffer_unless_asked():
    assert "expert_bias" not in build("profile", 1).state_dict()
    assert "expert_bias" in build("profile", 1, bias_update_rate=0.1).state_dict()
