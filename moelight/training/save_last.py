"""Save `last.ckpt` when training stops: at `max_steps`, and on SIGTERM (preemption).

Runs are step-based over an endless data stream, so Lightning's epoch-end save never happens;
without this, the steps since the last periodic checkpoint would be lost.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class SaveLast(L.Callback):
    def __init__(self, checkpoint: ModelCheckpoint):
        self.checkpoint = checkpoint

    def _save(self, trainer: L.Trainer) -> None:
        ckpt = self.checkpoint
        if ckpt.dirpath is None or ckpt._last_global_step_saved == trainer.global_step:
            return
        # Through the callback itself, so it overwrites its own last.ckpt (no last-v1) and
        # knows the step is saved.
        ckpt._save_last_checkpoint(trainer, ckpt._monitor_candidates(trainer))
        ckpt._last_global_step_saved = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)  # every rank calls it: sharded strategies need all of them

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Only a preemption: after a crash the state may be the cause, so the last good file stays.
        if isinstance(exception, SIGTERMException):
            self._save(trainer)
