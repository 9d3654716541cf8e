"""Time to quality: when does a validation-loss curve first reach a target, in emulated time?

A curve is the validation loss measured every N training steps, `(steps[i], losses[i])`, with
steps increasing. The crossing step is the first point where the curve is at or below the
target, linearly interpolated between that point and the one before it (the loss is assumed to
move linearly between two evaluations). When the very first point is already at or below the
target the crossing is that point's step (no earlier point to interpolate from; an upper bound).
A curve that never reaches the target has no crossing (None: "not reached").
Emulated time = crossing step x the arm's emulated step time (constant over a run).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from moelight.errors import MoelightError


def crossing_step(steps: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """The interpolated step at which `losses` first reaches `target`, or None if it never does."""
    if len(steps) != len(losses) or not steps:
        raise MoelightError(
            f"a loss curve needs as many steps as losses, at least one (got {len(steps)}, {len(losses)})"
        )
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise MoelightError("a loss curve's steps must increase")
    for i, (s, loss) in enumerate(zip(steps, losses)):
        if loss <= target:
            if i == 0:
                return float(s)
            s0, l0 = steps[i - 1], losses[i - 1]
            return s0 + (l0 - target) / (l0 - loss) * (s - s0)
    return None


def time_to_target(
    steps: Sequence[float], losses: Sequence[float], target: float, step_ms: float
) -> float | None:
    """Emulated seconds to reach `target` (None: not reached)."""
    s = crossing_step(steps, losses, target)
    return None if s is None else s * step_ms / 1e3


def spread(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Median, min and max over the reached values, and how many of them reached."""
    reached = [v for v in values if v is not None]
    if not reached:
        return {"median": None, "min": None, "max": None, "reached": 0, "of": len(values)}
    return {
        "median": statistics.median(reached),
        "min": min(reached),
        "max": max(reached),
        "reached": len(reached),
        "of": len(values),
    }
