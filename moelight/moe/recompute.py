"""Activation checkpointing of transformer blocks, and the flag that says a forward is a recompute.

`trainer.activation_checkpointing` picks what each block recomputes in backward instead of
keeping its activations: `full` (the whole block), `attention` (norm + attention), `moe` (norm +
the MoE FFN; dense FFN layers are kept). It uses torch.utils.checkpoint's non-reentrant mode,
which restores the RNG state, so noisy routers draw the same noise twice.

A recompute runs the forward a second time. Anything a forward *records* (an expert bias's load,
router-logged scalars, a dispatcher's sent-row counters, the layer's aux losses) must be recorded
once: code that records checks `recomputing()` (the MoE layer and the bundled helpers do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

CheckpointMode = Literal["none", "full", "moe", "attention"]
CHECKPOINT_MODES: tuple[str, ...] = ("none", "full", "moe", "attention")

_depth = 0


def recomputing() -> bool:
    """True inside the second (backward-time) run of a checkpointed forward."""
    return _depth > 0


@contextmanager
def _recompute_scope() -> Iterator[None]:
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def _contexts():
    return nullcontext(), _recompute_scope()


def checkpointed(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """`fn(*args)`, keeping only its inputs for backward and recomputing the rest there."""
    return checkpoint(fn, *args, use_reentrant=False, context_fn=_contexts)
