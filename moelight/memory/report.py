"""The memory plan as a table (for `moelight bench memory`) and as JSON."""

from __future__ import annotations

from moelight.memory.plan import GIB, MemoryPlan


def gib(n: int | float) -> str:
    return f"{n / GIB:.2f} GiB"


def describe_setup(p: MemoryPlan) -> str:
    s = p.setup
    sharding = f"FSDP2 x EP (P={s.expert_parallel})" if s.fsdp else f"DDP x EP (P={s.expert_parallel})"
    return (
        f"{s.devices} rank(s), {sharding}, {s.precision}, micro-batch {s.micro_batch} x {s.seq_len} tokens, "
        f"checkpointing {s.checkpointing}, loss chunk {s.loss_chunk_tokens or 'off'}, offload {s.offload}"
    )


def plan_lines(p: MemoryPlan, gpu_memory_gib: float | None = None) -> list[str]:
    c = p.counts
    lines = [
        describe_setup(p),
        f"model: {c.total / 1e9:.3f}B parameters ({c.dense / 1e9:.3f}B dense, {c.experts / 1e9:.3f}B in experts)",
        f"{'per rank':<18}{'bytes':>14}",
    ]
    for name, value in p.rows():
        lines.append(f"{name:<18}{gib(value):>14}")
    lines.append(f"peak is in: {p.peak_phase}")
    if gpu_memory_gib is not None:
        verdict = "fits" if fits(p, gpu_memory_gib) else "does NOT fit"
        lines.append(f"{verdict} in {gpu_memory_gib:g} GiB per device")
    lines += [f"note: {n}" for n in p.notes]
    return lines


def fits(p: MemoryPlan, gpu_memory_gib: float) -> bool:
    return p.peak <= gpu_memory_gib * GIB


def plan_json(p: MemoryPlan) -> dict:
    s = p.setup
    return {
        "setup": {k: getattr(s, k) for k in s.__dataclass_fields__},
        "parameters": {"total": p.counts.total, "dense": p.counts.dense, "experts": p.counts.experts},
        "bytes_per_rank": dict(p.rows()),
        "peak_phase": p.peak_phase,
        "notes": p.notes,
    }
