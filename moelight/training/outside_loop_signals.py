"""SIGTERM / SIGINT outside the training loop, where PreemptionGuard (signals.py) is not in charge.

`moelight fit` runs inside `signals_outside_training()`:
- Before `fit` sets up (parsing, run-directory preparation, building the data module and the
  model object) nothing is worth saving, so the handler raises `Interrupted` at once and the
  CLI exits 143 (SIGTERM) / 130 (SIGINT) with "interrupted before training started, nothing saved".
  Blocks that write to the run directory (moving an earlier run aside, recipe.yaml) run under
  `held()`: a signal waits until they are done, so they are never left half done, and earlier
  checkpoints are never touched.
- From `fit`'s setup (model build and checkpoint restore included) PreemptionGuard's handler is
  in: it records signals, and every rank stops at the next step boundary.
- After the last step's boundary (final validation, final save, teardown) a signal is recorded
  only: the final checkpoint completes, and the exit status is still 143 / 130 (`late_signal`).
  The process was asked to stop, and a script or scheduler that sent the signal must not read
  "completed normally" from it (a Ctrl-C'd shell loop would go on to its next command); the
  printed line says that the run completed and its final checkpoint is saved.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import lightning as L

from moelight.training.signals import SIGNALS, PreemptionGuard
from moelight.training.startup_signals import Interrupted, StartupWatch, marked_as_launcher

__all__ = ["Interrupted", "held", "late_signal", "signals_outside_training", "TrainingStarted"]


@dataclass
class _State:
    active: bool = False  # inside signals_outside_training()
    started: bool = False  # training has started: record, never raise
    holding: int = 0  # inside held(): record, raise when the block is done
    raised: bool = False  # Interrupted was raised once; later signals are only recorded
    received: list[signal.Signals] = field(default_factory=list)


_state = _State()  # signal handlers are process-wide, and so is this


def _first(received: list[signal.Signals]) -> signal.Signals:
    return min(received, key=SIGNALS.index)  # SIGTERM wins over SIGINT


def _raise_if_due() -> None:
    if _state.received and not (_state.started or _state.holding or _state.raised):
        _state.raised = True
        raise Interrupted(_first(_state.received))


def _handler(signum: int, frame: Any) -> None:
    _state.received.append(signal.Signals(signum))
    _raise_if_due()


@contextmanager
def signals_outside_training() -> Iterator[None]:
    """Handle SIGTERM and SIGINT for a whole `moelight fit` (see the module docstring)."""
    global _state
    _state = _State(active=True)
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    watch = StartupWatch(active=_start_up_in_charge, raised=lambda: _state.raised)
    try:
        with marked_as_launcher():
            yield
    finally:
        watch.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _state = _State()


def _start_up_in_charge() -> bool:
    """Start-up signal handling (startup_signals.StartupWatch) applies: our handler is in, training
    has not started, and no run-directory write is in progress."""
    ours = all(signal.getsignal(sig) is _handler for sig in SIGNALS)
    return ours and _state.active and not _state.started and not _state.holding


@contextmanager
def held() -> Iterator[None]:
    """A signal arriving in this block (it writes to the run directory) waits until it is done."""
    _state.holding += 1
    try:
        yield
    finally:
        _state.holding -= 1
    _raise_if_due()


class TrainingStarted(L.Callback):
    """Hands signals over to PreemptionGuard's step-boundary stop (it must come after it)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _state.started = True


def late_signal(trainer: L.Trainer) -> signal.Signals | None:
    """A signal that came after the last step's boundary check, so the run still completed."""
    received = [
        signal.Signals(s) for cb in trainer.callbacks if isinstance(cb, PreemptionGuard) for s in cb.received
    ]
    if _state.active and _state.started:
        received += _state.received
    return _first(received) if received else None
