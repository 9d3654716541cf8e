"""The few numbers a person watches, read from a Trainer's latest logged metrics."""

from __future__ import annotations

import lightning as L


def step_values(trainer: L.Trainer) -> dict[str, float]:
    """loss, tokens_per_s, lr, max_load (max over MoE layers of max/mean expert load),
    devices_per_token, val_loss: those logged so far."""
    m = trainer.callback_metrics
    out: dict[str, float] = {}
    for key, name in (
        ("train/loss", "loss"),
        ("tokens_per_s", "tokens_per_s"),
        ("dispatch/devices_per_token", "devices_per_token"),
    ):
        if key in m:
            out[name] = float(m[key])
    loads = [float(v) for k, v in m.items() if k.startswith("load/max_over_mean/")]
    if loads:
        out["max_load"] = max(loads)
    if trainer.optimizers:
        out["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
    return out
