"""Progress as plain lines, for output that is not a terminal (a log file, a scheduler's job log).

A live bar in a file keeps only its final state (or garbles it); this prints one short line every
`log_every_n_steps` steps and one at each validation, each under 80 columns.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks.progress import ProgressBar

from moelight.training.step_values import step_values


def step_line(step: int, max_steps: int, v: dict[str, float]) -> str:
    parts = [f"step {step:>{len(str(max_steps))}}/{max_steps}"]
    if "loss" in v:
        parts.append(f"loss {v['loss']:.4f}")
    if "tokens_per_s" in v:
        parts.append(f"tok/s {v['tokens_per_s']:,.0f}")
    if "lr" in v:
        parts.append(f"lr {v['lr']:.2e}")
    if "max_load" in v:
        parts.append(f"load {v['max_load']:.2f}")
    if "devices_per_token" in v:
        parts.append(f"dev/tok {v['devices_per_token']:.2f}")
    return "  ".join(parts)


class PlainProgress(ProgressBar):
    def __init__(self) -> None:
        super().__init__()
        self._enabled = True

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def _print(self, trainer: L.Trainer, line: str) -> None:
        if self._enabled and trainer.is_global_zero:  # one line per job, not one per rank
            print(line, flush=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step % trainer.log_every_n_steps == 0 or step == trainer.max_steps:
            self._print(trainer, step_line(step, trainer.max_steps, step_values(trainer)))

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        loss = float(trainer.callback_metrics["val/loss"])
        width = len(str(trainer.max_steps))
        self._print(trainer, f"step {trainer.global_step:>{width}}/{trainer.max_steps}  val loss {loss:.4f}")
