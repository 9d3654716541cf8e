"""Two gloo processes run `grouplocal` on their token shards; each result is compared with the
single-process `sorted` dispatch of all tokens on the same weights and routing.

Run as `python tests/ep_dispatch_worker.py OUT.json`: writes {case name: "ok" or the failure}.
Used by tests/test_grouplocal_dispatch.py (one spawn for every case keeps the suite fast).
"""

from __future__ import annotations

import json
import socket
import sys
import traceback
import zlib
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moelight.api import ExpertParallelContext, ExpertWeights, LayerContext, Routing, dispatchers

WORLD = 2
D, F, E = 16, 24, 8
TOKENS = (29, 13)  # unequal shards


def contiguous() -> torch.Tensor:
    return torch.arange(E) // (E // WORLD)


def shuffled() -> torch.Tensor:
    return torch.tensor([1, 0, 0, 1, 1, 0, 1, 0])


def routing_random(gen, t, k, placement):
    experts = torch.rand(t, E, generator=gen).topk(k, dim=1).indices
    return experts


def routing_remote_only(gen, t, k, placement, rank):
    """Every token of rank r goes only to experts on the other rank."""
    others = (placement != rank).nonzero().flatten()
    pick = torch.rand(t, len(others), generator=gen).topk(k, dim=1).indices
    return others[pick]


def routing_idle(gen, t, k, placement):
    """Experts 0 and 5 receive no tokens at all."""
    allowed = torch.tensor([e for e in range(E) if e not in (0, 5)])
    return allowed[torch.rand(t, len(allowed), generator=gen).topk(k, dim=1).indices]


def make_case(name: str, rank_tokens: tuple[int, ...], k: int, placement: torch.Tensor, dtype):
    """Global data for a case, identical on every rank (seeded)."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))  # same on every rank
    full = ExpertWeights(list(range(E)), D, F, init_std=0.3).to(dtype)
    with torch.no_grad():
        for p in full.parameters():
            p.copy_((torch.randn(p.shape, generator=gen) * 0.3).to(dtype))
    shards = []
    for r, t in enumerate(rank_tokens):
        if "remote" in name:
            experts = routing_remote_only(gen, t, k, placement, r)
        elif "idle" in name:
            experts = routing_idle(gen, t, k, placement)
        else:
            experts = routing_random(gen, t, k, placement)
        x = torch.randn(t, D, generator=gen).to(dtype)
        w = torch.rand(t, k, generator=gen)
        g = torch.randn(t, D, generator=gen).to(dtype)
        shards.append((x, experts, w, g))
    return full, shards


def expected_counts(
    experts: torch.Tensor, placement: torch.Tensor, rank: int, per_device: bool, d: int, es: int
):
    """Rows, remote rows, bytes and device visits, counted token by token (independently of the kernels)."""
    rows = remote = visits = 0
    for choice in experts.tolist():
        devices = [int(placement[e]) for e in choice]
        distinct = set(devices)
        visits += len(distinct)
        sent = sorted(distinct) if per_device else devices
        rows += len(sent)
        remote += sum(1 for dev in sent if dev != rank)
    return {"rows": rows, "remote_rows": remote, "bytes": remote * d * es * 2, "device_visits": visits}


def run_case(name, rank, group, rows, dtype, k, placement, rank_tokens=TOKENS, overlap=True, chunks=2):
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    full, shards = make_case(name, rank_tokens, k, placement, dtype)
    ctx = LayerContext(
        hidden_size=D, num_experts=E, top_k=k, layer_index=0, ffn_hidden_size=F, placement=placement
    )

    # Reference: one process, every expert, every token.
    x_all = torch.cat([s[0] for s in shards]).requires_grad_()
    e_all = torch.cat([s[1] for s in shards])
    w_all = torch.cat([s[2] for s in shards]).requires_grad_()
    g_all = torch.cat([s[3] for s in shards])
    ref_ctx = LayerContext(hidden_size=D, num_experts=E, top_k=k, layer_index=0, ffn_hidden_size=F)
    ref = dispatchers.build({"name": "sorted"}, ref_ctx, full)
    y_ref = ref(x_all, Routing(e_all, w_all, torch.zeros(len(e_all), E)))
    ref_grads = torch.autograd.grad(y_ref, [x_all, w_all, full.w1, full.v1, full.w2], g_all)

    # This rank: its experts (copies of the same weights) and its token shard.
    mine = (placement == rank).nonzero().flatten().tolist()
    local = ExpertWeights(mine, D, F).to(dtype)
    with torch.no_grad():
        for p, q in zip(local.parameters(), full.parameters()):
            p.copy_(q[mine])
    ep = ExpertParallelContext(rank=rank, size=WORLD, group=group)
    disp = dispatchers.build(
        {"name": "grouplocal", "rows": rows, "overlap": overlap, "chunks": chunks}, ctx, local, ep
    )
    x, experts, w, g = shards[rank]
    x = x.clone().requires_grad_()
    w = w.clone().requires_grad_()
    y = disp(x, Routing(experts, w, torch.zeros(len(experts), E)))
    gx, gw, g1, gv, g2 = torch.autograd.grad(y, [x, w, local.w1, local.v1, local.w2], g)

    lo = sum(rank_tokens[:rank])
    sl = slice(lo, lo + rank_tokens[rank])
    assert y.dtype == dtype
    close = dict(atol=tol, rtol=tol)
    torch.testing.assert_close(y.float(), y_ref[sl].float(), **close, msg=lambda m: f"output: {m}")
    torch.testing.assert_close(gx.float(), ref_grads[0][sl].float(), **close, msg=lambda m: f"grad x: {m}")
    torch.testing.assert_close(
        gw.float(), ref_grads[1][sl].float(), **close, msg=lambda m: f"grad weights: {m}"
    )
    for got, want, n in zip((g1, gv, g2), ref_grads[2:], ("w1", "v1", "w2")):
        torch.testing.assert_close(
            got.float(), want[mine].float(), **close, msg=lambda m, n=n: f"grad {n}: {m}"
        )
    want = expected_counts(experts, placement, rank, rows == "per_device", D, x.element_size())
    got = {key: getattr(disp.stats, key) for key in want}
    assert got == want, f"counters {got} != expected {want}"
    assert disp.stats.tokens == rank_tokens[rank]


def run_c2r_case(rank, group, rows):
    """C2R with `collaborators: placement`: every token's k experts sit on one device."""
    from moelight.api import routers

    k, placement = 2, shuffled()
    ctx = LayerContext(
        hidden_size=D, num_experts=E, top_k=k, layer_index=0, ffn_hidden_size=F, placement=placement
    )
    torch.manual_seed(0)  # same router on both ranks
    router = routers.build({"name": "c2r", "top_t": E // WORLD - 1, "collaborators": "placement"}, ctx)
    mine = (placement == rank).nonzero().flatten().tolist()
    ep = ExpertParallelContext(rank=rank, size=WORLD, group=group)
    disp = dispatchers.build({"name": "grouplocal", "rows": rows}, ctx, ExpertWeights(mine, D, F), ep)
    gen = torch.Generator().manual_seed(10 + rank)
    x = torch.randn(TOKENS[rank], D, generator=gen)
    routing = router(x)
    disp(x, routing).sum().backward()
    t = TOKENS[rank]
    devices = placement[routing.experts]
    assert (devices == devices[:, :1]).all(), "c2r placement routing left a device group"
    assert disp.stats.device_visits == t
    assert disp.stats.rows == (t if rows == "per_device" else t * k)
    want = expected_counts(routing.experts, placement, rank, rows == "per_device", D, 4)
    assert {key: getattr(disp.stats, key) for key in want} == want


def cases():
    for rows in ("per_device", "per_expert"):
        for dtype in (torch.float32, torch.bfloat16):
            dn = str(dtype).split(".")[-1]
            yield f"random-k2-{rows}-{dn}", dict(rows=rows, dtype=dtype, k=2, placement=contiguous())
            yield f"random-k3-shuffled-{rows}-{dn}", dict(rows=rows, dtype=dtype, k=3, placement=shuffled())
            yield f"remote-k2-{rows}-{dn}", dict(rows=rows, dtype=dtype, k=2, placement=contiguous())
            yield f"idle-k2-{rows}-{dn}", dict(rows=rows, dtype=dtype, k=2, placement=shuffled())
        yield (
            f"empty-rank-{rows}",
            dict(rows=rows, dtype=torch.float32, k=2, placement=contiguous(), rank_tokens=(17, 0)),
        )
        # Three pipelined chunks, and the blocking exchange (overlap off).
        yield (
            f"chunks3-k3-shuffled-{rows}-float32",
            dict(rows=rows, dtype=torch.float32, k=3, placement=shuffled(), chunks=3),
        )
        yield (
            f"chunks3-empty-rank-{rows}",
            dict(rows=rows, dtype=torch.float32, k=2, placement=contiguous(), rank_tokens=(17, 0), chunks=3),
        )
        for dtype in (torch.float32, torch.bfloat16):
            dn = str(dtype).split(".")[-1]
            yield (
                f"blocking-k3-shuffled-{rows}-{dn}",
                dict(rows=rows, dtype=dtype, k=3, placement=shuffled(), overlap=False),
            )
        yield (
            f"blocking-empty-rank-{rows}",
            dict(
                rows=rows,
                dtype=torch.float32,
                k=2,
                placement=contiguous(),
                rank_tokens=(17, 0),
                overlap=False,
            ),
        )


def worker(rank: int, port: int, out: str) -> None:
    # A failure on one rank must not hang the other forever.
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    group = dist.new_group(list(range(WORLD)))
    results = {}
    all_cases = list(cases()) + [(f"c2r-placement-{r}", {"c2r": r}) for r in ("per_device", "per_expert")]
    for name, kw in all_cases:
        try:
            if "c2r" in kw:
                run_c2r_case(rank, group, kw["c2r"])
            else:
                run_case(name, rank, group, **kw)
            results[name] = "ok"
        except Exception:
            results[name] = f"rank {rank}: {traceback.format_exc(limit=3)}"
    gathered: list = [None] * WORLD
    dist.all_gather_object(gathered, results)
    if rank == 0:
        merged = {name: next((r[name] for r in gathered if r[name] != "ok"), "ok") for name in results}
        with open(out, "w") as f:
            json.dump(merged, f, indent=1)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    mp.spawn(worker, args=(free_port(), sys.argv[1]), nprocs=WORLD)
