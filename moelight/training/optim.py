"""AdamW and its learning-rate schedule, stepped every optimizer step.

Two schedule shapes (`optim.schedule`), each a factor of `optim.lr` for optimizer step s (0-based):
- `cosine`: linear warm-up, then cosine decay to `min_lr_ratio`.
- `deepspeed_warmup`: DeepSpeed's `WarmupLR` (deepspeed/runtime/lr_schedules.py) as its engine
  runs it: warm-up from `min_lr_ratio` (DeepSpeed's warmup_min_lr / warmup_max_lr) on a log or
  linear curve (`warmup_type`) over max(2, warm-up steps), then constant at `lr`. DeepSpeed's
  scheduler starts at iteration -1 and is stepped after each optimizer step, so optimizer step s
  runs with the value for iteration s - 1 (the first two steps at the minimum). This is the
  schedule the official C2R Qwen run used: a DeepSpeed config with a `scheduler` block overrides
  transformers' `--lr_scheduler_type`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moelight.recipe import OptimConfig


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """`cosine`: linear warm-up over `warmup` steps, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def deepspeed_warmup_factor(step: int, warmup: int, min_ratio: float, warmup_type: str) -> float:
    """`deepspeed_warmup`: DeepSpeed WarmupLR's lr / warmup_max_lr at optimizer step `step`."""
    iteration = step - 1  # DeepSpeed's last_batch_iteration while this step runs
    warmup = max(2, warmup)  # WarmupLR's own floor
    if iteration < 0:
        gamma = 0.0  # before its first step() WarmupLR gives warmup_min_lr
    elif iteration < warmup:
        gamma = math.log(iteration + 1) / math.log(warmup) if warmup_type == "log" else iteration / warmup
    else:
        gamma = 1.0
    return min_ratio + (1 - min_ratio) * gamma


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    """transformers' rule: `warmup_ratio` of the total steps (rounded up) when set, else `warmup_steps`."""
    return math.ceil(cfg.warmup_ratio * total_steps) if cfg.warmup_ratio else cfg.warmup_steps


def schedule_factor(cfg: OptimConfig, total_steps: int):
    """The recipe's schedule as a function of the optimizer step: a factor of `optim.lr`."""
    warmup = warmup_steps(cfg, total_steps)
    if cfg.schedule == "deepspeed_warmup":
        kind = cfg.warmup_type or "log"
        return lambda step: deepspeed_warmup_factor(step, warmup, cfg.min_lr_ratio, kind)
    return lambda step: lr_factor(step, warmup, total_steps, cfg.min_lr_ratio)


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int) -> dict:
    # Decay matrices only (nanoGPT's rule): norms, biases and other vectors are not decayed.
    # Frozen parameters (router.freeze_gate) get no optimizer state at all.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(cfg, total_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
