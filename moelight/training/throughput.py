"""Tokens per second over a window of recent training steps.

One step's rate swings with whatever else the machine did in that step (a checkpoint save, a
descheduled thread): the progress bar and logs show the rate over the last steps instead, and the
run's mean is total tokens over total training time.
"""

from __future__ import annotations

from collections import deque


class ThroughputWindow:
    def __init__(self, size: int = 10):
        self.steps: deque[tuple[int, float]] = deque(maxlen=max(1, size))
        self.total_tokens = 0
        self.total_seconds = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.steps.append((tokens, seconds))
        self.total_tokens += tokens
        self.total_seconds += seconds

    def rate(self) -> float | None:
        """Tokens per second over the window; None before the first timed step."""
        seconds = sum(s for _, s in self.steps)
        return sum(t for t, _ in self.steps) / seconds if seconds > 0 else None

    def mean(self) -> float | None:
        return self.total_tokens / self.total_seconds if self.total_seconds > 0 else None
