"""SIGTERM (preemption) and SIGINT (Ctrl-C): finish the step, save on every rank, exit 143 / 130.

Lightning's own SIGTERM handler runs a collective (a broadcast) inside the signal handler, which
can interleave with an all2all in flight and crash or hang expert-parallel ranks, and Ctrl-C
makes it exit 1 without saving. Here the handler only records the signal; at the end of every
training step all ranks agree on it with one small all-reduce (a signal to ANY rank counts), and
together they raise Lightning's SIGTERM path: `SaveLast` writes a complete (sharded) checkpoint
at that step boundary and the CLI exits 143 (SIGTERM) or 130 (SIGINT).

The handler is installed at `setup`, before the checkpoint is restored, and it also takes the
place of Lightning's notifier (which Lightning installs after the restore): a signal during
start-up or restore is then honoured at the first step boundary, and no handler ever runs a
collective. `teardown` puts back what was there before, so a later run in the same process (a
notebook, a test) gets no stale handler.
"""

from __future__ import annotations

import signal
import threading
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

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self.received.clear()
        self.stopped_by = None
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)
        # Lightning composes this notifier (its broadcast) into the SIGTERM handler it installs
        # after the restore: let it only record, like ours.
        trainer._signal_connector._sigterm_notifier_fn = self._handler

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # After an exception (SIGTERMException included) Lightning restores the handlers it found,
        # ours, and calls no teardown hook: have it restore the ones from before ours instead.
        trainer._signal_connector._original_handlers.update(self._previous)

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
