"""`moelight bench comm`: projected all2all time per training step, from rows per token.

Under expert parallelism over P devices a token's hidden state crosses the network once per row:
- per-expert dispatch (MegaBlocks, `sorted`-style EP) sends one row per (token, expert): k rows;
- `grouplocal` sends one row per distinct device holding the token's experts: E[D] rows;
- with C2R and placement collaborators all k experts share a device: exactly 1 row.

E[D] comes from real routing statistics where they determine it (exactly) and from a stated
routing model where they do not (Monte-Carlo or closed form); every scenario says which.
Time per step = MoE layers x (calls x latency + bytes that leave the device / bandwidth).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moelight.collaboration import collaborators_from_counts, is_collaborator_list
from moelight.errors import MoelightError
from moelight.partition import distinct_devices

# ---- interconnects --------------------------------------------------------------------


@dataclass(frozen=True)
class Interconnect:
    name: str
    bandwidth_gbs: float  # per GPU, one direction, GB/s (1e9 bytes)
    latency_us: float  # per all2all call
    note: str


INTERCONNECTS: dict[str, Interconnect] = {
    "nvlink": Interconnect(
        "nvlink",
        450.0,
        10.0,
        "H100 NVLink4: 18 links x 50 GB/s = 900 GB/s bidirectional = 450 GB/s per direction per GPU; "
        "P > 8 assumes an NVLink domain that large (e.g. NVL72 systems)",
    ),
    "infiniband": Interconnect(
        "infiniband",
        50.0,
        20.0,
        "InfiniBand NDR 400 Gb/s per GPU = 50 GB/s per direction (one NIC per GPU, rail-optimised)",
    ),
}


# ---- expected distinct devices per token -----------------------------------------------


def contiguous_devices(num_experts: int, num_devices: int) -> torch.Tensor:
    """Device of each expert: contiguous blocks, sizes differing by at most one when P does not divide E."""
    sizes = [len(a) for a in np.array_split(np.arange(num_experts), num_devices)]
    return torch.repeat_interleave(torch.arange(num_devices), torch.tensor(sizes))


def collaborative_devices(counts: torch.Tensor, num_devices: int) -> torch.Tensor:
    """A greedy collaboration-aware placement of one layer: experts that co-activate share a device.

    Device by device: start from the unplaced expert with the most co-activation, then add the
    unplaced expert with the most co-activation with the group, until the group is full (block
    sizes as in `contiguous_devices`). A heuristic, good enough to show what placement buys.
    """
    c = torch.as_tensor(counts).to(torch.float64).clone()
    c.fill_diagonal_(0)
    e = c.shape[0]
    sizes = [len(a) for a in np.array_split(np.arange(e), num_devices)]
    device_of = torch.full((e,), -1, dtype=torch.long)
    free = torch.ones(e, dtype=torch.bool)
    for d, size in enumerate(sizes):
        seed = int(torch.where(free, c.sum(1), -1.0).argmax())
        group = [seed]
        free[seed] = False
        while len(group) < size:
            nxt = int(torch.where(free, c[group].sum(0), -1.0).argmax())
            group.append(nxt)
            free[nxt] = False
        device_of[group] = d
    return device_of


def group_sizes(device_of: torch.Tensor) -> list[int]:
    return torch.bincount(device_of).tolist()


def expected_devices_random_placement(num_experts: int, sizes: list[int], k: int) -> float:
    """E[distinct devices] of a token with k distinct experts, over a uniformly random placement.

    Exact for ANY routing distribution: a random placement maps the token's k-set to a uniform
    k-subset relative to the groups, so device d is missed with probability C(E-m_d, k)/C(E, k)
    (hypergeometric). Also exact for a fixed placement under uniform-random routing.
    """
    total = math.comb(num_experts, k)
    return float(sum(1 - math.comb(num_experts - m, k) / total for m in sizes))


def expected_devices_large_e(num_devices: int, k: int) -> float:
    """The large-E limit of the hypergeometric formula: experts on devices independently uniform."""
    return num_devices * (1 - (1 - 1 / num_devices) ** k)


def expected_devices_pairs(counts: torch.Tensor, device_of: torch.Tensor) -> float:
    """Exact E[D] for top-2 routing from pairwise co-activation counts [.., E, E] (mean over layers).

    With k = 2 every token is one pair {i, j}: it visits 1 device if both sit on the same one,
    else 2. So E[D] = 2 - (co-activations inside a device) / (all co-activations).
    """
    c = torch.as_tensor(counts).to(torch.float64)
    c = c.reshape(-1, c.shape[-2], c.shape[-1]).clone()
    c.diagonal(dim1=-2, dim2=-1).zero_()
    same = (device_of[:, None] == device_of[None, :]).to(torch.float64)
    per_layer = 2 - (c * same).sum((-1, -2)) / c.sum((-1, -2)).clamp_min(1e-300)
    return float(per_layer.mean())


def expected_devices_routing(experts: torch.Tensor, device_of: torch.Tensor) -> float:
    """Exact mean distinct devices per token of recorded routings [..., T, k]."""
    return float(distinct_devices(experts.long(), device_of).double().mean())


# ---- routing models (for Monte-Carlo where statistics do not determine E[D]) -------------

Sampler = Callable[[int, torch.Generator], torch.Tensor]


def uniform_model(num_experts: int, k: int) -> Sampler:
    """Each token: k distinct experts, uniformly at random."""

    def sample(n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.rand(n, num_experts, generator=gen).topk(k, dim=1).indices

    return sample


def pairwise_model(counts: torch.Tensor, k: int) -> Sampler:
    """Sequential sampling from co-activation counts: the first expert in proportion to its total
    co-activation, each next one in proportion to its co-activation with those already chosen.
    For k = 2 this reproduces the pair distribution exactly; for k > 2 it is a model.
    Layers (leading dim) are drawn uniformly.
    """
    c = torch.as_tensor(counts).to(torch.float64)
    c = c.reshape(-1, c.shape[-2], c.shape[-1]).clone()
    c.diagonal(dim1=-2, dim2=-1).zero_()

    def sample(n: int, gen: torch.Generator) -> torch.Tensor:
        layer = torch.randint(0, c.shape[0], (n,), generator=gen)
        cl = c[layer]  # [n, E, E]
        first = torch.multinomial(cl.sum(-1) + 1e-12, 1, generator=gen)
        chosen = [first]
        score = cl.gather(1, first[:, :, None].expand(-1, 1, cl.shape[-1])).squeeze(1)
        for _ in range(k - 1):
            taken = torch.zeros_like(score, dtype=torch.bool)
            for prev in chosen:
                taken.scatter_(1, prev, True)
            nxt = torch.multinomial(score.masked_fill(taken, 0) + (~taken) * 1e-12, 1, generator=gen)
            chosen.append(nxt)
            score = score + cl.gather(1, nxt[:, :, None].expand(-1, 1, cl.shape[-1])).squeeze(1)
        return torch.cat(chosen, dim=1)

    return sample


def c2r_profile_model(lists: torch.Tensor, k: int, top_t: int) -> Sampler:
    """C2R with profile collaborators: the top-1 expert uniform, the other k-1 uniformly among its
    first top_t collaborators (the router picks the highest-scoring ones; scores are modelled as
    exchangeable). Layers (leading dim) are drawn uniformly.
    """
    lists = torch.as_tensor(lists).long()
    lists = lists.reshape(-1, lists.shape[-2], lists.shape[-1])
    e = lists.shape[-1]
    # Row i's first top_t entries that are not i itself.
    cand = torch.stack(
        [torch.stack([row[row != i][:top_t] for i, row in enumerate(layer)]) for layer in lists]
    )

    def sample(n: int, gen: torch.Generator) -> torch.Tensor:
        layer = torch.randint(0, cand.shape[0], (n,), generator=gen)
        top1 = torch.randint(0, e, (n,), generator=gen)
        pick = torch.rand(n, top_t, generator=gen).topk(k - 1, dim=1).indices
        others = cand[layer, top1].gather(1, pick)
        return torch.cat([top1[:, None], others], dim=1)

    return sample


def monte_carlo_devices(sampler: Sampler, device_of: torch.Tensor, samples: int, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    return expected_devices_routing(sampler(samples, gen), device_of)


def c2r_placement_rows(device_of: torch.Tensor, k: int, samples: int = 4096, seed: int = 0) -> float | None:
    """Distinct devices per token measured with the `c2r` router (placement collaborators).

    Runs the real router on random hidden states over this placement; None when a device holds
    fewer than k experts (C2R placement needs the k experts on one device).
    """
    from moelight.layer_context import LayerContext
    from moelight.registry import routers

    smallest = min(group_sizes(device_of))
    if smallest < k:
        return None
    e = len(device_of)
    ctx = LayerContext(hidden_size=32, num_experts=e, top_k=k, layer_index=0, placement=device_of)
    torch.manual_seed(seed)
    router = routers.build({"name": "c2r", "top_t": smallest - 1, "collaborators": "placement"}, ctx)
    with torch.no_grad():
        experts = router(torch.randn(samples, 32)).experts
    return expected_devices_routing(experts, device_of)


# ---- sources of routing statistics ------------------------------------------------------


@dataclass
class RoutingSource:
    """Where rows per token come from: counts, collaborator lists, recorded routings, or nothing."""

    kind: str  # "counts" | "lists" | "routing" | "synthetic"
    path: str | None
    num_experts: int
    top_k: int
    layers: int
    counts: torch.Tensor | None = None
    lists: torch.Tensor | None = None
    routing: torch.Tensor | None = None

    def describe(self) -> str:
        where = f" from {self.path}" if self.path else ""
        what = {
            "counts": "pairwise co-activation counts",
            "lists": "collaborator lists (no counts)",
            "routing": "recorded routings (expert ids per token)",
            "synthetic": "no data: uniform-random routing",
        }[self.kind]
        return f"{what}{where}: {self.layers} layer(s), E = {self.num_experts}, k = {self.top_k}"


def _load_array(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise MoelightError(f"file not found: {path}")
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if p.suffix == ".json":
            data = json.loads(p.read_text())
            if isinstance(data, dict):
                keys = [k for k in ("collaborators", "coactivation", "counts", "experts") if k in data]
                if len(keys) != 1:
                    raise MoelightError(
                        f"{path}: expected one of the keys collaborators/coactivation/counts/experts"
                    )
                data = data[keys[0]]
            return np.asarray(data)
    except (OSError, ValueError) as exc:
        raise MoelightError(f"cannot read {path}: {exc}") from None
    raise MoelightError(f"{path}: unknown file type {p.suffix!r} (allowed: .npy, .json)")


def load_profile(path: str, top_k: int | None) -> RoutingSource:
    """Co-activation counts or collaborator lists, [layers, E, E] or [E, E]."""
    arr = _load_array(path)
    if arr.ndim not in (2, 3) or arr.shape[-1] != arr.shape[-2]:
        raise MoelightError(f"{path}: expected [layers, E, E] or [E, E], got {list(arr.shape)}")
    if top_k is None:
        raise MoelightError("--profile needs the routing's top-k: pass --top-k (or a --preset)")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() == 2:
        t = t[None]
    e = t.shape[-1]
    if not 1 <= top_k <= e:
        raise MoelightError(f"--top-k {top_k} must be in 1..{e}")
    if is_collaborator_list(t):
        return RoutingSource("lists", path, e, top_k, t.shape[0], lists=t.long())
    if bool((t < 0).any()):
        raise MoelightError(f"{path}: neither collaborator lists nor non-negative co-activation counts")
    return RoutingSource("counts", path, e, top_k, t.shape[0], counts=t.to(torch.float64))


def load_routing(path: str, num_experts: int | None) -> RoutingSource:
    """Recorded expert ids, [T, k] or [layers, T, k] (e.g. saved from `MoELayer.last_routing`)."""
    arr = _load_array(path)
    if arr.ndim not in (2, 3) or not np.issubdtype(arr.dtype, np.integer):
        raise MoelightError(
            f"{path}: expected integer expert ids [T, k] or [layers, T, k], got {arr.dtype} {list(arr.shape)}"
        )
    t = torch.from_numpy(np.ascontiguousarray(arr)).long()
    if t.dim() == 2:
        t = t[None]
    e = num_experts or int(t.max()) + 1
    if int(t.min()) < 0 or int(t.max()) >= e:
        raise MoelightError(f"{path}: expert ids must be in 0..{e - 1}")
    return RoutingSource("routing", path, e, t.shape[-1], t.shape[0], routing=t)


# ---- the projection ---------------------------------------------------------------------


@dataclass
class Setup:
    """What the projection assumes; printed with every projection."""

    tokens_per_device: int
    hidden: int
    dtype_bytes: int
    layers: int
    top_k: int
    data_transfers_per_layer: int = 4  # forward dispatch + combine, backward both again
    # all2all calls per layer per step: split sizes, rows out, rows back, and the two row
    # transfers again in backward. MegaBlocks makes these 5; so does grouplocal, which packs its
    # routing metadata into the row exchange (it made 7 when the metadata travelled separately).
    calls_per_expert: int = 5
    calls_grouplocal: int = 5
    meta_bytes_per_expert: int = 8  # grouplocal rows carry k (fp32 weight, fp32 local id) pairs
    meta_grad_bytes_per_expert: int = 4  # backward: the weights' gradient travels with the rows'

    def assumptions(self, interconnects: list[Interconnect]) -> list[str]:
        row = self.hidden * self.dtype_bytes
        lines = [
            f"tokens per device per step: {self.tokens_per_device}; hidden {self.hidden} x "
            f"{self.dtype_bytes} B = {row} B per row; MoE layers: {self.layers}; top-k: {self.top_k}",
            "source token and expert placement independent and uniform: a fraction (P-1)/P of the "
            "rows leaves the device (self-rows stay local); every device sends and receives alike",
            f"both directions: {self.data_transfers_per_layer} row transfers per layer per step "
            "(forward dispatch + combine, backward the same two reversed); full-duplex links, "
            "time = bytes sent per device / per-direction bandwidth",
            f"latency: all2all calls per layer per step: per-expert {self.calls_per_expert}, grouplocal "
            f"{self.calls_grouplocal} (split sizes, rows out with packed metadata, rows back; backward 2); "
            "latency x calls is not reduced by fewer rows",
            f"grouplocal metadata: k x {self.meta_bytes_per_expert} B per row forward (weight and local "
            f"expert id), k x {self.meta_grad_bytes_per_expert} B backward (the weights' gradient); "
            "per-expert rows carry none",
            "no overlap of communication with compute, no load imbalance, no hierarchical all2all",
        ]
        lines += [
            f"{ic.name}: {ic.bandwidth_gbs:g} GB/s per GPU per direction, {ic.latency_us:g} us per call ({ic.note})"
            for ic in interconnects
        ]
        return lines

    def bytes_per_layer(self, rows_per_token: float, num_devices: int, grouplocal: bool) -> float:
        """Bytes one device sends per MoE layer per step (all transfers, forward and backward)."""
        remote = rows_per_token * (num_devices - 1) / num_devices * self.tokens_per_device
        data = remote * self.hidden * self.dtype_bytes * self.data_transfers_per_layer
        if grouplocal:
            data += remote * self.top_k * (self.meta_bytes_per_expert + self.meta_grad_bytes_per_expert)
        return data

    def bytes_per_step(self, rows_per_token: float, num_devices: int, grouplocal: bool) -> float:
        return self.layers * self.bytes_per_layer(rows_per_token, num_devices, grouplocal)

    def time_ms(self, rows_per_token: float, num_devices: int, ic: Interconnect, grouplocal: bool) -> float:
        calls = self.calls_grouplocal if grouplocal else self.calls_per_expert
        return link_time_ms(
            self.layers * self.bytes_per_layer(rows_per_token, num_devices, grouplocal),
            self.layers * calls,
            ic,
        )


def link_time_ms(bytes_sent: float, calls: float, ic: Interconnect) -> float:
    """The model's all2all time: every call pays the latency, every byte one rank sends the
    per-direction bandwidth (full duplex: receiving in parallel), nothing overlaps."""
    return (calls * ic.latency_us * 1e-6 + bytes_sent / (ic.bandwidth_gbs * 1e9)) * 1e3


def grouplocal_bytes_per_layer(
    remote_rows: float, hidden: int, dtype_bytes: int, slots: int, num_devices: int
) -> float:
    """Bytes one rank sends per MoE layer and step through `grouplocal`'s exchange: its remote
    rows 4 times (rows out and back, forward and backward), each carrying `slots` (k per-device,
    1 per-expert) x 8 B of metadata out and x 4 B of weight gradient back, plus the counts."""
    row = hidden * dtype_bytes
    meta = slots * (Setup.meta_bytes_per_expert + Setup.meta_grad_bytes_per_expert)
    return remote_rows * (Setup.data_transfers_per_layer * row + meta) + (num_devices - 1) * 8


@dataclass
class Scenario:
    key: str
    label: str
    method: str
    grouplocal: bool  # False: per-expert dispatch (no metadata, fewer calls)
    rows: dict[int, float | None] = field(default_factory=dict)


PER_EXPERT = "per-expert"
C2R_PLACEMENT = "grouplocal c2r-placement"


def scenarios_for(
    source: RoutingSource,
    devices: list[int],
    *,
    top_t: int | None = None,
    samples: int = 200_000,
    seed: int = 0,
) -> tuple[list[Scenario], dict[int, str]]:
    """Rows per token for each method and device count; returns (scenarios, skipped P -> reason)."""
    e, k = source.num_experts, source.top_k
    skipped: dict[int, str] = {}
    usable = []
    for p in devices:
        if p < 2:
            skipped[p] = "P < 2: no all2all"
        elif p > e:
            skipped[p] = f"P > E = {e}: fewer experts than devices (would need replicated or split experts)"
        else:
            usable.append(p)

    per_expert = Scenario(PER_EXPERT, "per-expert (MegaBlocks)", "k rows per token by construction", False)
    contig = Scenario("grouplocal top-k contiguous", "grouplocal, top-k, contiguous", "", True)
    random_p = Scenario(
        "grouplocal top-k random",
        "grouplocal, top-k, random placement",
        "exact hypergeometric P(1 - C(E-E/P,k)/C(E,k)), any routing (large-E limit P(1-(1-1/P)^k))",
        True,
    )
    collab = None
    if source.kind == "counts":
        collab = Scenario(
            "grouplocal top-k collaborative",
            "grouplocal, top-k, collaborative placement",
            "per layer, a greedy placement grouping co-activated experts; then as the contiguous column",
            True,
        )
    c2r_prof = None
    if top_t is not None and source.kind in ("counts", "lists"):
        c2r_prof = Scenario(
            "grouplocal c2r-profile contiguous",
            f"grouplocal, C2R profile T={top_t}, contiguous",
            f"Monte-Carlo ({samples} tokens): top-1 uniform, k-1 uniform among its first T collaborators",
            True,
        )
    c2r = Scenario(
        C2R_PLACEMENT,
        "grouplocal, C2R placement",
        "measured: the c2r router (collaborators: placement) on random inputs, 4096 tokens",
        True,
    )
    if source.kind == "counts" and k == 2:
        contig.method = "exact from pairwise co-activation counts (k = 2)"
    elif source.kind == "counts":
        contig.method = f"Monte-Carlo ({samples} tokens) of a pairwise model of the counts (k > 2 is not determined by pairs)"
    elif source.kind == "routing":
        contig.method = "exact count over the recorded routings"
    else:
        contig.method = "uniform-random routing (the data have no counts): exact hypergeometric"

    lists = None
    if c2r_prof is not None:
        lists = source.lists if source.kind == "lists" else collaborators_from_counts(source.counts)
        if not k - 1 <= top_t <= e - 1:
            raise MoelightError(f"--top-t {top_t} must be in {k - 1}..{e - 1}")

    for p in usable:
        dev = contiguous_devices(e, p)
        sizes = group_sizes(dev)
        per_expert.rows[p] = float(k)
        random_p.rows[p] = expected_devices_random_placement(e, sizes, k)
        if source.kind == "counts" and k == 2:
            contig.rows[p] = expected_devices_pairs(source.counts, dev)
        elif source.kind == "counts":
            contig.rows[p] = monte_carlo_devices(pairwise_model(source.counts, k), dev, samples, seed)
        elif source.kind == "routing":
            contig.rows[p] = expected_devices_routing(source.routing, dev)
        else:
            contig.rows[p] = expected_devices_random_placement(e, sizes, k)
        if collab is not None:
            layer_counts = source.counts.reshape(-1, e, e)
            per_layer = [collaborative_devices(c, p) for c in layer_counts]
            if k == 2:
                values = [expected_devices_pairs(c, d) for c, d in zip(layer_counts, per_layer)]
            else:
                values = [
                    monte_carlo_devices(pairwise_model(c, k), d, max(1, samples // len(per_layer)), seed)
                    for c, d in zip(layer_counts, per_layer)
                ]
            collab.rows[p] = float(np.mean(values))
        if c2r_prof is not None:
            c2r_prof.rows[p] = monte_carlo_devices(c2r_profile_model(lists, k, top_t), dev, samples, seed)
        c2r.rows[p] = c2r_placement_rows(dev, k, seed=seed)
        if c2r.rows[p] is None:
            skipped.setdefault(p, f"C2R placement needs >= k = {k} experts per device (E/P = {e / p:g})")
    extra = [x for x in (collab, c2r_prof) if x is not None]
    out = [per_expert, contig, random_p, *extra, c2r]
    return out, skipped


def project(
    source: RoutingSource,
    setup: Setup,
    devices: list[int],
    interconnects: list[Interconnect],
    *,
    top_t: int | None = None,
    samples: int = 200_000,
    seed: int = 0,
) -> dict[str, Any]:
    """The whole projection as a JSON-able dict (rows per token, bytes and time per step, goal)."""
    scenarios, skipped = scenarios_for(source, devices, top_t=top_t, samples=samples, seed=seed)
    k = source.top_k
    times: dict[str, dict[str, dict[int, float | None]]] = {}
    for ic in interconnects:
        times[ic.name] = {
            s.key: {
                p: (None if r is None else setup.time_ms(r, p, ic, s.grouplocal)) for p, r in s.rows.items()
            }
            for s in scenarios
        }
    per_expert = next(s for s in scenarios if s.key == PER_EXPERT)
    c2r = next(s for s in scenarios if s.key == C2R_PLACEMENT)
    required = (k - 1) / k
    c2r_ps = [p for p, r in c2r.rows.items() if r is not None]
    reductions = {
        ic.name: {p: 1 - times[ic.name][C2R_PLACEMENT][p] / times[ic.name][PER_EXPERT][p] for p in c2r_ps}
        for ic in interconnects
    }
    payload = {p: 1 - c2r.rows[p] / per_expert.rows[p] for p in c2r_ps}
    wire = {
        p: 1 - setup.bytes_per_step(c2r.rows[p], p, True) / setup.bytes_per_step(per_expert.rows[p], p, False)
        for p in c2r_ps
    }
    min_red = min((r for per in reductions.values() for r in per.values()), default=None)
    goal = {
        "top_k": k,
        "required_reduction": required,
        "c2r_rows_per_token": {p: c2r.rows[p] for p in c2r_ps},
        "per_expert_rows_per_token": float(k),
        "rows_goal_met": bool(c2r_ps) and all(abs(c2r.rows[p] - 1.0) < 1e-12 for p in c2r_ps),
        "row_bytes_reduction": payload,
        "wire_bytes_reduction": wire,
        "time_reduction": reductions,
        "min_time_reduction": min_red,
        "time_goal_met": min_red is not None and min_red >= required - 1e-12,
        "payload_goal_met": bool(c2r_ps) and all(v >= required - 1e-12 for v in payload.values()),
    }
    return {
        "kind": "comm",
        "source": {"kind": source.kind, "path": source.path, "description": source.describe()},
        "setup": asdict(setup),
        "interconnects": [asdict(ic) for ic in interconnects],
        "assumptions": setup.assumptions(interconnects),
        "devices": devices,
        "skipped": skipped,
        "scenarios": [asdict(s) for s in scenarios],
        "time_ms_per_step": times,
        "bytes_per_step": {
            s.key: {
                p: (None if r is None else setup.bytes_per_step(r, p, s.grouplocal))
                for p, r in s.rows.items()
            }
            for s in scenarios
        },
        "goal": goal,
    }
