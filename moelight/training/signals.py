"""SIGTERM (preemption) and SIGINT (Ctrl-C): finish the step, save on every rank, exit 143 / 130.

Lightning's own SIGTERM handler runs a collective (a broadcast) inside the signal handler, which
can interleave with an all2all in flight and crash or hang expert-parallel ranks, and Ctrl-C
makes it exit 1 without saving. Here the handler only records the signal; at the end of every
training step all ranks agree on it with one small all-reduce (a signal to ANY rank counts), and
together they raise Lightning's SIGTERM path: `SaveLast` writes a complete (sharded) checkpoint
at that step boundary and the CLI exits 143 (SIGTERM) or 130 (SIGINT).
"""

from __future__ import annotations

import signal
from typing import Any

import lightning as L
import torch

from moelight.training.rank_agreement import any_rank

SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class PreemptionGuard(L.Callback):
    def __init__(self) -> None:
        self.received: set[int] = set()
        self.stopped_by: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame) -> None:
        self.received.add(signum)  # nothing else: a collective may be in flight right now

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        local = torch.tensor([float(s in self.received) for s in SIGNALS], device=pl_module.device)
        agreed = any_rank(local).tolist()
        if not any(agreed):
            return
        self.stopped_by = SIGNALS[agreed.index(1.0)]  # SIGTERM wins over SIGINT
        # Lightning then stops after this step and raises SIGTERMException on every rank; the
        # step's checkpoint callbacks still run, and SaveLast saves in on_exception.
        trainer._signal_connector.received_sigterm = True


def stop_signal(trainer: L.Trainer) -> signal.Signals | None:
    """The signal that stopped `trainer` (agreed by all ranks), if any."""
    for cb in trainer.callbacks:
        if isinstance(cb, PreemptionGuard) and cb.stopped_by is not None:
            return cb.stopped_by
    return signal.SIGTERM if trainer.received_sigterm else None


def exit_code(sig: signal.Signals) -> int:
    return EXIT_CODES.get(sig, 128 + int(sig))
