"""C2R variants against plain-torch references of their rules: soft C2R (penalty), online C2R
(lists re-derived from co-activation; resume exact), per-layer T (the layer's T overrides top_t)."""

from __future__ import annotations

import pytest
import torch

from moelight.api import LayerContext, routers

D, E, K = 16, 16, 2


def collaborator_lists(seed: int = 0, e: int = E) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(e):
        others = torch.tensor([j for j in range(e) if j != i])
        rows.append(torch.cat([others[torch.randperm(e - 1, generator=gen)], torch.tensor([i])]))
    return torch.stack(rows)


PLACEMENT = (torch.arange(E) // 4)[torch.randperm(E, generator=torch.Generator().manual_seed(3))]


def ctx_for(collaborators: str, k: int = K, layer: int = 0) -> LayerContext:
    return LayerContext(
        hidden_size=D,
        num_experts=E,
        top_k=k,
        layer_index=layer,
        placement=PLACEMENT if collaborators == "placement" else None,
        collaborators=collaborator_lists() if collaborators == "profile" else None,
    )


def build(name: str, collaborators: str = "profile", k: int = K, layer: int = 0, **params):
    torch.manual_seed(0)
    if name == "c2r":
        params.setdefault("collaborators", collaborators)
    router = routers.build({"name": name, **params}, ctx_for(collaborators, k, layer))
    with torch.no_grad():
        router.gate.weight.normal_(0, 0.7)
    return router


def soft_reference(logits: torch.Tensor, candidates_of, k: int, penalty: float) -> torch.Tensor:
    """Per token, plain python: top-1 e; every other expert's value minus `penalty` unless it is one
    of e's candidates; the k-1 best of those."""
    out = []
    for row in logits.double().tolist():
        e = max(range(len(row)), key=lambda j: row[j])
        cand = set(candidates_of(e))
        vals = {j: row[j] - (0.0 if j in cand else penalty) for j in range(len(row)) if j != e}
        rest = sorted(vals, key=lambda j: -vals[j])[: k - 1]
        out.append([e, *rest])
    return torch.tensor(out)


def profile_candidates(top_t: int):
    lists = collaborator_lists()
    return lambda e: [int(j) for j in lists[e] if int(j) != e][:top_t]


def placement_candidates(e: int) -> list[int]:
    return [j for j in range(E) if j != e and PLACEMENT[j] == PLACEMENT[e]]


# --- soft C2R -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("penalty", [0.3, 1.0])
def test_soft_c2r_matches_reference_profile(k, penalty):
    router = build("c2r", k=k, top_t=3, penalty=penalty).eval()
    out = router(torch.randn(600, D))
    ref = soft_reference(out.logits, profile_candidates(3), k, penalty)
    assert torch.equal(out.experts, ref)
    probs = torch.softmax(out.logits.float(), -1)
    torch.testing.assert_close(out.weights, probs.gather(1, ref))


def test_soft_c2r_matches_reference_placement():
    router = build("c2r", "placement", top_t=3, penalty=0.5).eval()
    out = router(torch.randn(600, D))
    assert torch.equal(out.experts, soft_reference(out.logits, placement_candidates, K, 0.5))


@pytest.mark.parametrize("collaborators", ["profile", "placement"])
def test_soft_c2r_limits(collaborators):
    x = torch.randn(800, D)
    hard = build("c2r", collaborators, top_t=3).eval()(x)
    topk = build("topk", collaborators).eval()(x)  # same seed: the same gate weights
    zero = build("c2r", collaborators, top_t=3, penalty=0.0).eval()(x)
    inf = build("c2r", collaborators, top_t=3, penalty=float("inf")).eval()(x)
    huge = build("c2r", collaborators, top_t=3, penalty=1e6).eval()(x)
    mid = build("c2r", collaborators, top_t=3, penalty=0.5).eval()(x)
    torch.testing.assert_close(topk.logits, hard.logits)
    assert torch.equal(zero.experts, topk.experts)  # penalty 0: top-k
    assert torch.equal(inf.experts, hard.experts)  # penalty inf: hard C2R
    assert torch.equal(huge.experts, hard.experts)
    # in between, and different from both on a share of tokens
    differs_hard = (mid.experts != hard.experts).any(-1).float().mean()
    differs_topk = (mid.experts.sort(-1).values != topk.experts.sort(-1).values).any(-1).float().mean()
    assert differs_hard > 0.02 and differs_topk > 0.02


def test_penalty_and_balance_loss_are_exclusive():
    with pytest.raises(Exception, match="balance_loss_coef"):
        build("c2r", top_t=3, penalty=1.0, balance_loss_coef=0.01)


# --- per-layer T --------------------------------------------------------------------------------


def test_layer_top_t_overrides_top_t_per_layer():
    x = torch.randn(500, D)
    for layer, t in enumerate([1, 5]):
        per_layer = build("c2r", layer=layer, top_t=3, layer_top_t=[1, 5]).eval()(x)
        plain = build("c2r", layer=layer, top_t=t).eval()(x)
        assert torch.equal(per_layer.experts, plain.experts)


def test_layer_top_t_too_short_is_a_config_error():
    from moelight.api import ConfigError

    with pytest.raises(ConfigError, match="layer_top_t"):
        build("c2r", layer=2, top_t=3, layer_top_t=[1, 5])


# --- online C2R ---------------------------------------------------------------------------------


def lists_from_counts_reference(counts: torch.Tensor) -> torch.Tensor:
    """Row i: other experts by decreasing count, ties by lower id, then i (plain python)."""
    e = counts.shape[0]
    rows = []
    for i in range(e):
        others = sorted((j for j in range(e) if j != i), key=lambda j: (-float(counts[i, j]), j))
        rows.append([*others, i])
    return torch.tensor(rows)


def coactivation_reference(chosen: torch.Tensor, e: int) -> torch.Tensor:
    c = torch.zeros(e, e)
    for ids in chosen.tolist():
        for a in ids:
            for b in ids:
                if a != b:
                    c[a, b] += 1
    return c


def train_steps(router, batches, start: int = 0):
    """Forward in training mode, then the optimizer-step hook, once per batch; returns routings."""
    outs = []
    for i, x in enumerate(batches):
        router.train()
        router.begin_step(start + i)
        outs.append(router(x))
        router.after_optimizer_step()
    return outs


def test_online_c2r_rederives_lists_every_k_steps():
    torch.manual_seed(1)
    batches = [torch.randn(300, D) for _ in range(7)]
    router = build("c2r", "online", top_t=3, refresh_every=3)
    outs = train_steps(router, batches)
    # steps 0-2: no lists yet -> plain top-k
    for out in outs[:3]:
        assert torch.equal(out.experts, out.logits.topk(K, -1).indices)
    counts = sum(coactivation_reference(o.logits.topk(K, -1).indices, E) for o in outs[:3])
    lists = lists_from_counts_reference(counts)
    # steps 3-5: C2R with the lists of steps 0-2 (hard rule: best candidate among the first 3)
    for out in outs[3:6]:
        cands = lambda e, lists=lists: [int(j) for j in lists[e] if int(j) != e][:3]  # noqa: E731
        assert torch.equal(out.experts, soft_reference(out.logits, cands, K, float("inf")))
    # the refresh at step 6 uses only steps 3-5's counts (of the unconstrained top-k choices)
    counts2 = sum(coactivation_reference(o.logits.topk(K, -1).indices, E) for o in outs[3:6])
    assert torch.equal(router.online_lists, lists_from_counts_reference(counts2))
    assert not torch.equal(lists, router.online_lists)


def test_online_c2r_resume_is_exact():
    torch.manual_seed(2)
    batches = [torch.randn(200, D) for _ in range(9)]
    straight = build("c2r", "online", top_t=2, refresh_every=2)
    ref = train_steps(straight, batches)
    first = build("c2r", "online", top_t=2, refresh_every=2)
    train_steps(first, batches[:5])  # stop mid-window (5 % 2 = 1), with pending counts saved
    state = {k: v.clone() for k, v in first.state_dict().items()}
    assert {"online_lists", "online_counts", "online_ready", "online_steps"} <= set(state)
    resumed = build("c2r", "online", top_t=2, refresh_every=2)
    resumed.load_state_dict(state)
    rest = train_steps(resumed, batches[5:], start=5)
    for a, b in zip(ref[5:], rest):
        assert torch.equal(a.experts, b.experts)
        torch.testing.assert_close(a.weights, b.weights)
    assert torch.equal(straight.online_lists, resumed.online_lists)


def test_online_c2r_discarded_step_is_not_counted():
    torch.manual_seed(3)
    x = torch.randn(200, D)
    a = build("c2r", "online", top_t=2, refresh_every=5)
    b = build("c2r", "online", top_t=2, refresh_every=5)
    a.train()
    a(torch.randn(200, D))
    a.discard_step()
    train_steps(a, [x])
    train_steps(b, [x])
    assert torch.equal(a.online_counts, b.online_counts)


def test_online_needs_refresh_every():
    with pytest.raises(Exception, match="refresh_every"):
        build("c2r", "online", top_t=2)
    with pytest.raises(Exception, match="refresh_every"):
        build("c2r", top_t=2, refresh_every=5)


def _online_rank_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        router = build("c2r", "online", top_t=2, refresh_every=2)
        torch.manual_seed(100 + rank)  # each rank routes its own tokens
        batches = [torch.randn(150, D) + rank for _ in range(2)]
        outs = train_steps(router, batches)
        torch.save({"chosen": [o.logits.topk(K, -1).indices for o in outs], "lists": router.online_lists},
                   f"{out}.rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_online_lists_use_the_counts_of_every_rank(tmp_path):
    """Two gloo ranks with different tokens derive the same lists: those of both ranks' counts."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "online")
    mp.spawn(_online_rank_worker, args=(port, out), nprocs=2)
    res = [torch.load(f"{out}.rank{r}.pt") for r in range(2)]
    counts = sum(coactivation_reference(c, E) for r in res for c in r["chosen"])
    local = sum(coactivation_reference(c, E) for c in res[0]["chosen"])
    expected = lists_from_counts_reference(counts)
    assert not torch.equal(expected, lists_from_counts_reference(local))  # the sum matters
    for r in res:
        assert torch.equal(r["lists"], expected)
