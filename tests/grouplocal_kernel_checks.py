"""Each Triton kernel of the group-local dispatch against its torch reference, and the whole
dispatcher with `kernels: triton` against `sorted`.

On CPU the kernels run under Triton's interpreter, which must be switched on (TRITON_INTERPRET=1)
before triton is first imported; lightning and others import it early, so this runs in its own
process: `python tests/grouplocal_kernel_checks.py OUT.json` (tests/test_grouplocal_kernels.py
does that) writes {check name: "ok" or the failure}. On CUDA it runs the kernels compiled.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

if __name__ == "__main__" and "--cuda" not in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from moelight.api import ExpertWeights, LayerContext, Routing, dispatchers  # noqa: E402
from moelight.kernels.combine import combine_rows  # noqa: E402
from moelight.kernels.counting_sort import counting_sort  # noqa: E402
from moelight.kernels.permute import gather_rows  # noqa: E402
from moelight.kernels.row_plan import row_plan  # noqa: E402
from moelight.kernels.token_slots import token_slots  # noqa: E402

DEVICE = torch.device("cuda" if "--cuda" in sys.argv else "cpu")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def equal(a, b, what: str) -> None:
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x.cpu(), y.cpu()), f"{what}: output {i} differs\n{x}\n{y}"


def check_token_slots() -> None:
    for t, k, p in [(0, 2, 2), (1, 1, 2), (37, 2, 2), (300, 3, 4), (65, 4, 3)]:
        dev = torch.randint(0, p, (t, k), generator=gen(t)).to(DEVICE)
        equal(token_slots(dev, "torch"), token_slots(dev, "triton"), f"token_slots T={t} k={k}")


def check_counting_sort() -> None:
    for n, bins in [(0, 2), (1, 1), (300, 2), (5000, 5), (777, 64)]:
        keys = torch.randint(-1, bins, (n,), generator=gen(n)).to(DEVICE)
        ref = counting_sort(keys, bins, "torch")
        equal(ref, counting_sort(keys, bins, "triton"), f"counting_sort n={n} bins={bins}")
        assert torch.equal(
            ref[1].cpu(), torch.argsort(torch.where(keys >= 0, keys, bins).cpu(), stable=True)[: len(ref[1])]
        )


def check_row_plan() -> None:
    for t, k, p in [(0, 2, 2), (41, 2, 2), (90, 3, 4)]:
        dev = torch.randint(0, p, (t, k), generator=gen(t)).to(DEVICE)
        local = torch.randint(0, 5, (t, k), generator=gen(t + 1)).to(DEVICE)
        first, slot = token_slots(dev, "torch")
        opens = first == torch.arange(k, device=DEVICE)
        for per_device in (True, False):
            keys = torch.where(opens, dev, -1) if per_device else dev
            opened, _, counts = counting_sort(keys, p, "torch")
            args = (first, slot, local, opened, int(counts.sum()), per_device)
            equal(
                row_plan(*args, impl="torch"),
                row_plan(*args, impl="triton"),
                f"row_plan T={t} per_device={per_device}",
            )


def grads_of(fn, inputs, grad_out):
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, [i for i in inputs if i.requires_grad], grad_out))


def close(a, b, tol, what: str) -> None:
    """Within `tol` relative to the largest reference value (bf16 sums of cancelling terms)."""
    for i, (x, y) in enumerate(zip(a, b)):
        scale = float(x.detach().float().abs().max().clamp(min=1)) if x.numel() else 1.0
        torch.testing.assert_close(
            y.float(), x.float(), atol=tol * scale, rtol=tol, msg=lambda m, i=i: f"{what} [{i}]: {m}"
        )


def check_gather_rows() -> None:
    for dtype, tol in [(torch.float32, 0.0), (torch.bfloat16, 1e-2)]:
        n, m, d = 9, 14, 40
        index = torch.randint(0, n - 2, (m,), generator=gen(3))  # the last rows are never copied
        width = int(torch.bincount(index, minlength=n).max())
        inverse = torch.full((n, width), -1, dtype=torch.long)
        fill = [0] * n
        for i, r in enumerate(index.tolist()):
            inverse[r, fill[r]] = i
            fill[r] += 1
        src = torch.randn(n, d, generator=gen(4)).to(dtype).to(DEVICE).requires_grad_()
        grad_out = torch.randn(m, d, generator=gen(5)).to(dtype).to(DEVICE)
        index, inverse = index.to(DEVICE), inverse.to(DEVICE)
        ref = grads_of(lambda s, i=index, v=inverse: gather_rows(s, i, v, "torch"), [src], grad_out)
        got = grads_of(lambda s, i=index, v=inverse: gather_rows(s, i, v, "triton"), [src], grad_out)
        close(ref, got, tol, f"gather_rows {dtype}")


def check_combine_rows() -> None:
    for dtype, tol in [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]:
        for width, weighted, d in [(1, True, 16), (3, True, 40), (2, False, 1100)]:
            n, m = 30, 12
            index = torch.randperm(m * width, generator=gen(width))[: m * width].view(m, width)
            index[index >= n - 3] = -1  # empty slots, and src rows nobody references
            src = torch.randn(n, d, generator=gen(6)).to(dtype).to(DEVICE).requires_grad_()
            weight = torch.rand(m, width, generator=gen(7)).to(DEVICE).requires_grad_() if weighted else None
            grad_out = torch.randn(m, d, generator=gen(8)).to(DEVICE)
            index = index.to(DEVICE)
            inputs = [src] + ([weight] if weighted else [])
            results = []
            for impl in ("torch", "triton"):

                def run(s, *w, impl=impl, index=index):
                    return combine_rows(s, index, w[0] if w else None, impl)

                results.append(grads_of(run, inputs, grad_out))
            ref, got = results
            close(ref, got, tol, f"combine_rows {dtype} W={width} weighted={weighted}")


def check_dispatcher_matches_sorted() -> None:
    t, d, f, e, k = 20, 16, 24, 6, 2  # small: the interpreter runs one program at a time
    ctx = LayerContext(hidden_size=d, num_experts=e, top_k=k, layer_index=0, expert_hidden_size=f)
    for dtype, tol in [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)]:
        experts = ExpertWeights(list(range(e)), d, f, init_std=0.3).to(dtype).to(DEVICE)
        allowed = torch.tensor([0, 1, 2, 4, 5])  # expert 3 idle
        chosen = allowed[torch.rand(t, len(allowed), generator=gen(9)).topk(k, dim=1).indices].to(DEVICE)
        weights = torch.rand(t, k, generator=gen(10)).to(DEVICE)
        x = torch.randn(t, d, generator=gen(11)).to(dtype).to(DEVICE)
        grad_out = torch.randn(t, d, generator=gen(12)).to(dtype).to(DEVICE)
        results = {}
        for spec in (
            {"name": "sorted"},
            {"name": "grouplocal", "kernels": "triton"},
            {"name": "grouplocal", "kernels": "triton", "rows": "per_expert"},
        ):
            disp = dispatchers.build(spec, ctx, experts)
            xx, ww = x.clone().requires_grad_(), weights.clone().requires_grad_()
            y = disp(xx, Routing(chosen, ww, torch.zeros(t, e, device=DEVICE)))
            results[str(spec)] = (
                y,
                *torch.autograd.grad(y, [xx, ww, experts.w1, experts.v1, experts.w2], grad_out),
            )
        ref = results.pop(str({"name": "sorted"}))
        for name, got in results.items():
            close(ref, got, tol, f"{name} {dtype}")


CHECKS = {
    "token_slots": check_token_slots,
    "counting_sort": check_counting_sort,
    "row_plan": check_row_plan,
    "gather_rows": check_gather_rows,
    "combine_rows": check_combine_rows,
    "dispatcher_triton_matches_sorted": check_dispatcher_matches_sorted,
}


def main(out: str) -> None:
    results = {}
    for name, check in CHECKS.items():
        try:
            start = time.perf_counter()
            check()
            results[name] = "ok"
            print(f"{name}: ok in {time.perf_counter() - start:.1f}s")
        except Exception:
            results[name] = traceback.format_exc(limit=4)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
