"""Save `last.ckpt` when training stops at `max_steps`.

Runs are step-based over an endless data stream, so Lightning's epoch-end save never happens;
without this, the final steps since the last periodic checkpoint would be lost.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class SaveLastOnTrainEnd(L.Callback):
    def __init__(self, checkpoint: ModelCheckpoint):
        self.checkpoint = checkpoint

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.received_sigterm or self.checkpoint.dirpath is None:
            return
        last = f"{self.checkpoint.dirpath}/{self.checkpoint.CHECKPOINT_NAME_LAST}{self.checkpoint.FILE_EXTENSION}"
        if self.checkpoint._last_global_step_saved != trainer.global_step:
            trainer.save_checkpoint(last)  # every rank calls it: sharded strategies need all of them
            self.checkpoint._last_global_step_saved = trainer.global_step
