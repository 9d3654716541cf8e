"""`trainer.max_epochs`: the number of optimizer steps follows from the training set once it is loaded.

Steps = ceil(max_epochs x training rows / global batch), global batch = data.batch_size x
data-parallel ranks x trainer.accumulate_grad_batches; a `trainer.max_steps` set in the recipe as
well caps it. The data stream itself is endless (see `GlobalBatchSampler`), so epoch e of the
stream is exactly the rows' e-th shuffled pass.
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import Callback

from moelight.recipe import TrainerConfig


def steps_for_epochs(epochs: float, num_rows: int, global_batch: int) -> int:
    return max(1, math.ceil(epochs * num_rows / global_batch))


def resolve_max_steps(trainer_cfg: TrainerConfig, num_rows: int, global_batch: int) -> int:
    """The run's optimizer steps: from max_epochs when set (capped by an explicit max_steps)."""
    if trainer_cfg.max_epochs is None:
        return trainer_cfg.max_steps
    steps = steps_for_epochs(trainer_cfg.max_epochs, num_rows, global_batch)
    if "max_steps" in trainer_cfg.model_fields_set:
        steps = min(steps, trainer_cfg.max_steps)
    return steps


class EpochBudget(Callback):
    """Sets the Trainer's max_steps from `trainer.max_epochs` before the optimizer and LR schedule are built."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        cfg = pl_module.recipe.trainer
        if stage != "fit" or cfg.max_epochs is None:
            return
        data = trainer.datamodule
        global_batch = data.config.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        trainer.fit_loop.epoch_loop.max_steps = resolve_max_steps(cfg, len(data.train_dataset), global_batch)
