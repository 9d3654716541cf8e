"""Lightning's rich progress bar, labelled by step (runs are step-based, epochs are meaningless here)."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'train':{len(self.validation_description)}}"

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
