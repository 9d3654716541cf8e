"""A Lightning Trainer configured from a recipe: loggers, checkpoints, strategy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from moelight.errors import MoelightError
from moelight.parallel.liveness import RankRegistry
from moelight.recipe import Recipe
from moelight.training.checkpoint_io import AtomicCheckpointIO
from moelight.training.nonfinite import NonFiniteGuard
from moelight.training.progress import StepProgressBar
from moelight.training.save_last import SaveLast
from moelight.training.signals import PreemptionGuard


def checkpoint_dir(recipe: Recipe) -> Path:
    return Path(recipe.trainer.out_dir) / "checkpoints"


def build_loggers(recipe: Recipe) -> list:
    t = recipe.trainer
    loggers = []
    has_tensorboard = importlib.util.find_spec("tensorboard") is not None
    if t.logger in ("auto", "csv", "both"):
        loggers.append(CSVLogger(t.out_dir, name="logs"))
    if t.logger in ("tensorboard", "both") or (t.logger == "auto" and has_tensorboard):
        if not has_tensorboard:
            raise MoelightError("trainer.logger: tensorboard is not installed (pip install tensorboard)")
        loggers.append(TensorBoardLogger(t.out_dir, name="tb"))
    return loggers


def build_strategy(recipe: Recipe):
    if recipe.parallel.expert_parallel > 1:
        from datetime import timedelta

        from moelight.parallel.strategy import ExpertParallelStrategy
        from moelight.parallel.validate import check_expert_parallel_recipe

        check_expert_parallel_recipe(recipe)  # before launch: one clean error, not one per rank
        return ExpertParallelStrategy(
            expert_parallel=recipe.parallel.expert_parallel,
            timeout=timedelta(seconds=recipe.parallel.collective_timeout_s),
        )
    return "auto"


def build_trainer(recipe: Recipe, callbacks: list | None = None, **overrides) -> L.Trainer:
    t = recipe.trainer
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir(recipe),
        filename="step{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_last=True,
        save_top_k=1,
        monitor=None,
        enable_version_counter=False,  # a moved or resumed run dir keeps its last.ckpt (no last-v1)
    )
    loggers = build_loggers(recipe)
    cbs = [checkpoint, SaveLast(checkpoint), NonFiniteGuard(t.on_nonfinite, t.max_nonfinite_skips)]
    cbs += [PreemptionGuard(), RankRegistry(t.out_dir)]
    cbs += callbacks or []
    if t.progress_bar:
        cbs.append(StepProgressBar())
    if loggers:
        cbs.append(LearningRateMonitor(logging_interval="step"))
    kwargs = dict(
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        precision=t.precision,
        accumulate_grad_batches=t.accumulate_grad_batches,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=recipe.optim.grad_clip,
        logger=loggers or False,
        enable_progress_bar=t.progress_bar,
        default_root_dir=t.out_dir,
        callbacks=cbs,
        strategy=build_strategy(recipe),
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)
