"""Measure the peak bytes a piece of CPU work allocates, from the allocator's own reports.

`torch.profiler` with `profile_memory=True` records every allocation and free of the CPU
allocator (each op's self allocations, and `[memory]` events for frees). Replaying them in time
order gives the live bytes at every moment and their peak: the CPU counterpart of
`torch.cuda.max_memory_allocated`, used to validate the memory plan without a GPU. Tensors that
existed before the measured work (parameters) are not seen: the caller adds their bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one storage count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def peak_bytes(work: Callable[[], object]) -> int:
    """The peak of bytes allocated and not yet freed while `work()` runs, above the start."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    deltas = sorted(
        (e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage
    )
    live = peak = 0
    for _, delta in deltas:
        live += delta
        peak = max(peak, live)
    return peak
