"""The CONTRIBUTING.md example router, loaded from its file as a recipe would, against plain loops."""

from pathlib import Path

import pytest
import torch

from moelight.api import ConfigError, LayerContext, routers
from moelight.registry import load_plugin_modules

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sinkhorn_router.py"


def build(top_k: int = 2, num_experts: int = 8, **params):
    load_plugin_modules([str(EXAMPLE)])
    ctx = LayerContext(hidden_size=16, num_experts=num_experts, top_k=top_k, layer_index=0)
    return routers.build({"name": "sinkhorn", **params}, ctx)


def sinkhorn_loops(logits: list[list[float]], iterations: int) -> list[list[float]]:
    """Alternately scale rows to sum 1/T and columns to sum 1/E, one number at a time."""
    import math

    t, e = len(logits), len(logits[0])
    p = [[math.exp(v) for v in row] for row in logits]
    for _ in range(iterations):
        p = [[v / (sum(row) * t) for v in row] for row in p]
        cols = [sum(p[i][j] for i in range(t)) for j in range(e)]
        p = [[p[i][j] / (cols[j] * e) for j in range(e)] for i in range(t)]
    return p


def test_sinkhorn_router_balances_in_training_and_is_topk_in_eval():
    torch.manual_seed(0)
    router = build(iterations=5)
    x = torch.randn(40, 16)
    x[:, 0] += 3.0
    with torch.no_grad():
        router.gate.weight.normal_(0, 0.3)
        router.gate.weight[:2, 0] = 1.0  # experts 0 and 1 are favoured by every token
    logits = router.gate(x).float()
    probs = torch.softmax(logits, -1)
    balanced = torch.tensor(sinkhorn_loops(logits.tolist(), 5))
    train = router.train()(x)
    assert [sorted(r) for r in train.experts.tolist()] == [
        sorted(r) for r in balanced.topk(2, -1).indices.tolist()
    ]
    test = router.eval()(x)
    assert test.experts.tolist() == probs.topk(2, -1).indices.tolist()
    load = [torch.bincount(r.experts.flatten(), minlength=8).float().std() for r in (train, test)]
    assert load[0] < load[1]  # balancing spreads the skewed load
    for r in (train, test):
        torch.testing.assert_close(r.weights, probs.gather(1, r.experts))


def test_sinkhorn_router_refuses_nothing_to_balance():
    with pytest.raises(ConfigError, match="model.top_k"):
        build(top_k=4, num_experts=4)
