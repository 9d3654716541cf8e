"""GPU checks: grouplocal's Triton kernels natively on CUDA, and `megablocks` equal to `sorted`.

Skipped, with the reason shown by `pytest -ra`, on machines without CUDA (and the MegaBlocks
tests also without MegaBlocks: docs/megablocks.md says how to install it).
"""

import importlib.util
import json

import pytest
import torch

from moelight.api import ExpertWeights, LayerContext, Routing, dispatchers

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs CUDA: run on a machine with an NVIDIA GPU (pytest -m gpu)",
    ),
]

CUDA = torch.device("cuda")
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def make_layer(t=300, d=64, f=128, e=8, k=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ctx = LayerContext(hidden_size=d, num_experts=e, top_k=k, layer_index=0, expert_hidden_size=f)
    experts = ExpertWeights(list(range(e)), d, f, init_std=0.2)
    scores = torch.rand(t, e, generator=gen)
    scores[:, 3] = -1  # expert 3 receives no tokens
    routing = Routing(scores.topk(k, dim=1).indices, torch.rand(t, k, generator=gen), torch.zeros(t, e))
    x = torch.randn(t, d, generator=gen)
    grad_out = torch.randn(t, d, generator=gen)
    return ctx, experts, routing, x, grad_out


def run_dispatcher(spec, ctx, experts, routing, x, grad_out, dtype):
    """Output and gradients (x, weights, w1, v1, w2) of one dispatcher on CUDA in `dtype`."""
    ex = ExpertWeights(list(range(ctx.num_experts)), ctx.hidden_size, ctx.expert_hidden_size)
    ex.load_state_dict(experts.state_dict())
    ex = ex.to(CUDA, dtype)
    disp = dispatchers.build(spec, ctx, ex).to(CUDA)
    xi = x.to(CUDA, dtype).requires_grad_()
    wi = routing.weights.to(CUDA).requires_grad_()
    y = disp(xi, Routing(routing.experts.to(CUDA), wi, routing.logits.to(CUDA)))
    grads = torch.autograd.grad(y, [xi, wi, ex.w1, ex.v1, ex.w2], grad_out.to(CUDA, dtype))
    return y.float(), [g.float() for g in grads]


def assert_same(got, want, tol):
    y, grads = got
    y_ref, grads_ref = want
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    for name, g, r in zip(("x", "weights", "w1", "v1", "w2"), grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, atol=tol * max(1.0, float(r.abs().max())), rtol=tol, msg=name)


# ---- grouplocal's kernels: Triton natively vs the torch references --------------------------


def test_grouplocal_kernels_triton_equal_torch_references():
    pytest.importorskip("triton")
    from moelight.kernels.combine import combine_rows
    from moelight.kernels.counting_sort import counting_sort
    from moelight.kernels.permute import gather_rows
    from moelight.kernels.token_slots import token_slots

    gen = torch.Generator().manual_seed(0)
    dev = torch.randint(0, 4, (1000, 4), generator=gen).to(CUDA)
    for a, b in zip(token_slots(dev, "triton"), token_slots(dev, "torch"), strict=True):
        assert torch.equal(a, b)

    keys = torch.randint(-1, 7, (5000,), generator=gen).to(CUDA)  # -1: not sorted (dropped)
    for a, b in zip(counting_sort(keys, 7, "triton"), counting_sort(keys, 7, "torch"), strict=True):
        assert torch.equal(a, b)

    n, m, w, d = 400, 150, 3, 96
    src = torch.randn(n, d, generator=gen).to(CUDA)
    index = torch.full((m * w,), -1, dtype=torch.long)
    index[: n - 10] = torch.randperm(n, generator=gen)[: n - 10]  # each src row used at most once
    index = index[torch.randperm(m * w, generator=gen)].view(m, w).to(CUDA)
    weight = torch.rand(m, w, generator=gen).to(CUDA)
    outs = []
    for impl in ("triton", "torch"):
        s, wt = src.clone().requires_grad_(), weight.clone().requires_grad_()
        y = combine_rows(s, index, wt, impl)
        outs.append((y, *torch.autograd.grad(y, [s, wt], torch.ones_like(y))))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)

    # gather: out[i] = src[idx[i]], every src row copied up to 2 times; inverse lists the copies.
    idx = torch.cat([torch.arange(n), torch.arange(0, n, 3)])[
        torch.randperm(n + len(range(0, n, 3)), generator=gen)
    ]
    inverse = torch.full((n, 2), -1, dtype=torch.long)
    fill = torch.zeros(n, dtype=torch.long)
    for i, s in enumerate(idx.tolist()):
        inverse[s, fill[s]] = i
        fill[s] += 1
    grad = torch.randn(len(idx), d, generator=gen).to(CUDA)
    outs = []
    for impl in ("triton", "torch"):
        s = src.clone().requires_grad_()
        y = gather_rows(s, idx.to(CUDA), inverse.to(CUDA), impl)
        outs.append((y, *torch.autograd.grad(y, [s], grad)))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernels", ["triton", "torch"])
@pytest.mark.parametrize("rows", ["per_device", "per_expert"])
def test_grouplocal_equals_sorted_on_cuda(dtype, kernels, rows):
    layer = make_layer(k=3)
    want = run_dispatcher({"name": "sorted"}, *layer, dtype)
    got = run_dispatcher({"name": "grouplocal", "kernels": kernels, "rows": rows}, *layer, dtype)
    assert_same(got, want, TOL[dtype])


# ---- megablocks ----------------------------------------------------------------------------


def megablocks_reason() -> str | None:
    from moelight_plugins.dispatchers.megablocks import MegaBlocksDispatcher

    return MegaBlocksDispatcher.unavailable_reason()


@pytest.mark.parametrize("mlp_impl", ["grouped", "sparse"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_megablocks_equals_sorted_bf16(mlp_impl, k):
    reason = megablocks_reason()
    if reason:
        pytest.skip(f"megablocks unavailable: {reason}")
    if mlp_impl == "grouped" and importlib.util.find_spec("grouped_gemm") is None:
        pytest.skip("mlp_impl grouped needs the grouped_gemm package (docs/megablocks.md)")
    if mlp_impl == "sparse":
        import triton

        if tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 2):
            pytest.skip(f"MegaBlocks refuses its sparse MLP with triton >= 3.2 (have {triton.__version__})")
    # MegaBlocks' block-sparse path needs ffn % 128 == 0; 128 suits both.
    layer = make_layer(t=512, d=128, f=128, e=8, k=k, seed=k)
    want = run_dispatcher({"name": "sorted"}, *layer, torch.bfloat16)
    got = run_dispatcher({"name": "megablocks", "mlp_impl": mlp_impl}, *layer, torch.bfloat16)
    assert_same(got, want, TOL[torch.bfloat16])


def test_megablocks_refuses_fp32_with_a_clear_message():
    reason = megablocks_reason()
    if reason or importlib.util.find_spec("grouped_gemm") is None:
        pytest.skip(f"megablocks unavailable: {reason or 'grouped_gemm not installed'}")
    from moelight.errors import MoelightError

    with pytest.raises(MoelightError, match="bfloat16 only"):
        run_dispatcher({"name": "megablocks"}, *make_layer(d=128, f=128), torch.float32)


# ---- the benchmark on CUDA (cuda.Event timing) -------------------------------------------


def test_bench_layer_on_cuda(tmp_path, capsys):
    from moelight.cli.main import main

    candidates = ["sorted", "grouplocal", "gemm-only", "hf-loop"]
    if megablocks_reason() is None and importlib.util.find_spec("grouped_gemm") is not None:
        candidates.append("megablocks")
    out = tmp_path / "gpu.json"
    argv = ["bench", "layer", "--preset", "cpu-tiny", "--dtype", "bf16", "--device", "cuda"]
    argv += [
        "--dispatchers",
        ",".join(candidates),
        "--baseline",
        "sorted",
        "--repeats",
        "3",
        "--json",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["device"].startswith("cuda") and data["env"]["gpu"]
    errs = {r["name"]: r["max_rel_err"] for r in data["results"]}
    assert all(v is None or v < 5e-2 for v in errs.values()), errs
