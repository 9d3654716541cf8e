"""`sorted` dispatch equals a naive per-token loop, forward and backward, fp32 and bf16."""

import pytest
import torch
import torch.nn.functional as F

from moelight.api import ExpertWeights, LayerContext, Routing, dispatchers


def naive_moe(x, experts, weights, w1, v1, w2):
    """One token at a time, one expert at a time: the definition of an MoE FFN."""
    rows = []
    for t in range(x.shape[0]):
        acc = torch.zeros(x.shape[1], dtype=torch.float32)
        for e, w in zip(experts[t].tolist(), weights[t]):
            h = F.silu(w1[e] @ x[t]) * (v1[e] @ x[t])
            acc = acc + w * (w2[e] @ h).float()
        rows.append(acc)
    return torch.stack(rows).to(x.dtype)


def random_routing(t, e, k, gen, unused=()):
    allowed = torch.tensor([i for i in range(e) if i not in unused])
    scores = torch.rand(t, len(allowed), generator=gen)
    experts = allowed[scores.topk(k, dim=1).indices]
    weights = torch.rand(t, k, generator=gen)
    return Routing(experts, weights, torch.zeros(t, e))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_sorted_matches_naive_loop(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    t, d, f, e, k = 37, 16, 24, 6, 2
    ctx = LayerContext(hidden_size=d, num_experts=e, top_k=k, layer_index=0, ffn_hidden_size=f)
    experts = ExpertWeights(list(range(e)), d, f, init_std=0.3).to(dtype)
    disp = dispatchers.build({"name": "sorted"}, ctx, experts)
    routing = random_routing(t, e, k, gen, unused=(3,))  # expert 3 receives no tokens

    x = torch.randn(t, d, generator=gen).to(dtype).requires_grad_()
    y = disp(x, routing)
    grad_out = torch.randn(t, d, generator=gen).to(dtype)
    gx, g1, gv, g2 = torch.autograd.grad(y, [x, experts.w1, experts.v1, experts.w2], grad_out)

    ref_params = [p.detach().clone().requires_grad_() for p in (experts.w1, experts.v1, experts.w2)]
    x_ref = x.detach().clone().requires_grad_()
    y_ref = naive_moe(x_ref, routing.experts, routing.weights, *ref_params)
    ref_grads = torch.autograd.grad(y_ref, [x_ref, *ref_params], grad_out)

    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), y_ref.float(), atol=tol, rtol=tol)
    for got, want in zip((gx, g1, gv, g2), ref_grads):
        torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    assert g1[3].abs().sum() == 0  # the idle expert gets a zero gradient, not garbage
    assert disp.stats.rows == t * k and disp.stats.tokens == t
