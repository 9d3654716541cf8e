"""Lightning's rich progress bar, labelled by step (runs are step-based, epochs are meaningless
here), narrow enough for an 80-column terminal: a short bar, the time left, no it/s column
(tokens/s says it), and three short metrics."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import BatchesProcessedColumn, CustomBarColumn
from rich.progress import TextColumn, TimeRemainingColumn

# Logged name -> (shown name, format). Everything else stays in the logs, off the bar.
SHOWN = {"train/loss": ("loss", ".3f"), "val/loss": ("val", ".3f"), "tokens_per_s": ("tok/s", ",.0f")}
BAR_WIDTH = 8


def short_metrics(metrics: dict) -> dict[str, str]:
    out = {}
    for key, (name, fmt) in SHOWN.items():
        if key in metrics:
            try:
                out[name] = format(float(metrics[key]), fmt)
            except (TypeError, ValueError):
                out[name] = str(metrics[key])
    return out


class StepProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'train':{len(self.validation_description)}}"

    def configure_columns(self, trainer) -> list:
        return [
            TextColumn("[progress.description]{task.description}"),
            CustomBarColumn(
                bar_width=BAR_WIDTH,
                complete_style=self.theme.progress_bar,
                finished_style=self.theme.progress_bar_finished,
                pulse_style=self.theme.progress_bar_pulse,
            ),
            BatchesProcessedColumn(style=self.theme.batch_progress),
            TimeRemainingColumn(),  # the time left only: the summary gives the wall time
        ]

    def get_metrics(self, trainer, pl_module) -> dict[str, str]:
        return short_metrics(super().get_metrics(trainer, pl_module))
