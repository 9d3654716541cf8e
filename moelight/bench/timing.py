"""Timing with warm-up, interleaved repeats, and robust summaries (median, IQR, min/max).

On CUDA each repeat is timed with a pair of `torch.cuda.Event`s (device time, no host jitter);
on CPU with `time.perf_counter`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class Summary:
    """Robust statistics of repeated timings, in milliseconds."""

    n: int
    median_ms: float
    q1_ms: float
    q3_ms: float
    iqr_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), without numpy for a handful of values."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(times_ms: list[float]) -> Summary:
    q1, q3 = quantile(times_ms, 0.25), quantile(times_ms, 0.75)
    return Summary(
        n=len(times_ms),
        median_ms=statistics.median(times_ms),
        q1_ms=q1,
        q3_ms=q3,
        iqr_ms=q3 - q1,
        min_ms=min(times_ms),
        max_ms=max(times_ms),
        mean_ms=statistics.fmean(times_ms),
    )


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds one call of `fn` takes on `device`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int,
    device: torch.device,
    before: Callable[[str], object] | None = None,
) -> dict[str, list[float]]:
    """Time every candidate `repeats` times, round-robin, the order rotated each round.

    `before(name)` runs untimed ahead of each call (e.g. to clear gradients). Returns the
    per-round milliseconds of each candidate, aligned by round so ratios can be paired.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            if before:
                before(name)
            fns[name]()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        # Rotating the order keeps any candidate from always running right after another's
        # cache-evicting work (or always first after a pause).
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if before:
                before(name)
            times[name].append(time_once(fns[name], device))
    return times


def paired_speedups(baseline_ms: list[float], candidate_ms: list[float]) -> list[float]:
    """Per-round baseline/candidate time ratios: > 1 means the candidate is faster."""
    return [b / c for b, c in zip(baseline_ms, candidate_ms, strict=True)]


def paired_results(
    times: Mapping[str, list[float]],
    labels: list[str],
    baseline: str,
    tokens: int,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One JSON-able row per label from `interleaved` timings: its summary, the median and
    quartiles of its paired speedups over `baseline`, tokens per second at the median time,
    then the label's `extra` fields, then every repeat's time."""
    results = []
    for label in labels:
        summary = summarize(times[label])
        ratios = paired_speedups(times[baseline], times[label])
        results.append(
            {
                "name": label,
                **summary.as_dict(),
                "speedup": statistics.median(ratios),
                "speedup_q1": quantile(ratios, 0.25),
                "speedup_q3": quantile(ratios, 0.75),
                "tokens_per_s": tokens / (summary.median_ms / 1e3),
                **(extra or {}).get(label, {}),
                "times_ms": times[label],
            }
        )
    return results
