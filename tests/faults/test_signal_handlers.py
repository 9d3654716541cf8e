"""Guarantees of the signal handling itself (in-process, no moelight model needed):

- a SIGTERM that arrives before training starts (setup, checkpoint restore) is honoured at the
  first step boundary: the guard's handler is in from `setup`, Lightning's broadcasting notifier
  never runs, and nothing else receives the signal;
- a run leaves no handler of its own behind, after it finishes and after a signal stopped it
  (Lightning's exception path), so a later run in the same process still stops on SIGTERM.
"""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import SIGTERMException

from moelight.training.signals import SIGNALS, PreemptionGuard, stop_signal


class SendSigterm(L.Callback):
    """Sends this process SIGTERM from the hook named `when`."""

    def __init__(self, when: str):
        setattr(self, when, lambda *args: os.kill(os.getpid(), signal.SIGTERM))


def fit(tmp_path, *callbacks: L.Callback) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=6,
        callbacks=[PreemptionGuard(), *callbacks],
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    try:
        trainer.fit(BoringModel())
    except SIGTERMException:
        pass  # the stop the guard asked for
    return trainer


@pytest.fixture()
def outside_handlers():
    """SIGTERM outside the guard is a test failure (not the end of pytest); restored afterwards."""

    def not_guarded(signum, frame):
        raise AssertionError("SIGTERM reached the handler from before the run: the guard was not in")

    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    signal.signal(signal.SIGTERM, not_guarded)
    yield {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("when", ["on_fit_start", "on_train_batch_end"])
def test_sigterm_before_or_during_training_stops_at_a_step_and_restores_handlers(
    tmp_path, outside_handlers, when
):
    """A SIGTERM during start-up or training stops the run at the next step boundary; afterwards
    the handlers from before the run are back."""
    trainer = fit(tmp_path, SendSigterm(when))
    assert stop_signal(trainer) == signal.SIGTERM
    assert trainer.global_step == (1 if when == "on_fit_start" else 2)
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == outside_handlers


def test_a_finished_run_restores_handlers(tmp_path, outside_handlers):
    """A run that ends at max_steps leaves the handlers from before it."""
    trainer = fit(tmp_path)
    assert stop_signal(trainer) is None and trainer.global_step == 6
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == outside_handlers
