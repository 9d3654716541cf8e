"""The run's record: `history.csv` (step, loss, tokens/s, lr, max expert load, devices per token,
validation loss), `summary.json` and `plots/` under trainer.out_dir, written by global rank 0.

A resumed run keeps the rows of the run it continues (up to its checkpoint's step).
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L

from moelight.report.history import Summary, read_history, summarize, write_history, write_summary
from moelight.training.step_values import step_values


class RunRecord(L.Callback):
    def __init__(self, out_dir: str | Path, checkpoints: str | Path, plots: bool = True):
        self.out_dir = Path(out_dir)
        self.checkpoints = str(checkpoints)
        self.plots = plots
        self.rows: list[dict[str, float]] = []
        self.summary: Summary | None = None
        self._start = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._start = time.perf_counter()
        step = trainer.global_step  # restored by now when resuming
        self.rows = [r for r in read_history(self.out_dir) if r["step"] <= step] if step else []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step % trainer.log_every_n_steps == 0 or step == trainer.max_steps:
            self.rows.append({"step": step, **step_values(trainer)})

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        self.rows.append(
            {"step": trainer.global_step, "val_loss": float(trainer.callback_metrics["val/loss"])}
        )
        if trainer.is_global_zero:
            write_history(self.out_dir, self.rows)  # kept current: a killed run leaves its curves

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        throughput = getattr(pl_module, "throughput", None)
        self.summary = summarize(
            self.rows,
            trainer.global_step,
            throughput.mean() if throughput is not None else None,
            time.perf_counter() - self._start,
            self.checkpoints,
        )
        if not trainer.is_global_zero:
            return
        write_history(self.out_dir, self.rows)
        write_summary(self.out_dir, self.summary)
        if self.plots:
            from moelight.report.plots import write_run_plots

            write_run_plots(self.rows, self.out_dir / "plots", self.out_dir.name)
