"""A Lightning Trainer configured from a recipe: loggers, checkpoints, strategy.

The recipe's `trainer` section gives the Trainer's arguments (`trainer_arguments`); moelight's
own callbacks and checkpoint IO are always added (`moelight_callbacks`, `with_atomic_io`).
`moelight fit` feeds the same values to LightningCLI as defaults, so every other Trainer argument
can be set there too; `build_trainer` is the same Trainer for Python scripts and tests.
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

from moelight.checkpoint.files import AtomicCheckpointIO
from moelight.errors import MoelightError
from moelight.parallel.collective_timeout import strategy_with_timeout
from moelight.parallel.fsdp_strategy import FSDPExpertParallelStrategy
from moelight.parallel.liveness import RankRegistry
from moelight.parallel.strategy import ExpertParallelStrategy
from moelight.recipe import Recipe
from moelight.training.epochs import EpochBudget
from moelight.training.nonfinite import NonFiniteGuard
from moelight.training.outside_loop_signals import TrainingStarted
from moelight.training.plain_progress import PlainProgress
from moelight.training.progress import StepProgressBar
from moelight.training.run_record import RunRecord
from moelight.training.save_last import SaveLast
from moelight.training.signals import PreemptionGuard
from moelight.training.validate_ep import check_expert_parallel_recipe

# Recipe `trainer` fields that are Lightning Trainer arguments of the same name.
SAME_NAMED = (
    "max_steps",
    "accelerator",
    "devices",
    "num_nodes",
    "precision",
    "accumulate_grad_batches",
    "val_check_interval",
    "limit_val_batches",
    "log_every_n_steps",
)
# Lightning Trainer argument -> the recipe field that holds it.
ALIASES = {
    "default_root_dir": ("trainer", "out_dir"),
    "enable_progress_bar": ("trainer", "progress_bar"),
    "gradient_clip_val": ("optim", "grad_clip"),
}


def checkpoint_dir(recipe: Recipe) -> Path:
    return Path(recipe.trainer.out_dir) / "checkpoints"


def trainer_arguments(recipe: Recipe) -> dict[str, Any]:
    """Lightning Trainer keyword arguments a recipe fixes (loggers and strategy: see below)."""
    t = recipe.trainer
    kwargs = {name: getattr(t, name) for name in SAME_NAMED}
    for arg, (section, field) in ALIASES.items():
        kwargs[arg] = getattr(getattr(recipe, section), field)
    # Steps, not epochs: the training stream is endless, so validation counts steps.
    kwargs.update(check_val_every_n_epoch=None, num_sanity_val_steps=0)
    if not recipe.data.has_validation:
        kwargs["limit_val_batches"] = 0  # data.val_fraction: 0 without data.val_source: no validation
    # `moelight fit` prints its own header (global parameter counts, FLOPs per token); Lightning's
    # summary would add rank-local counts and "Total FLOPs: 0". --trainer.enable_model_summary true
    # brings it back.
    kwargs["enable_model_summary"] = False
    return kwargs


def logger_specs(recipe: Recipe) -> list[tuple[type, dict[str, Any]]]:
    """The loggers `trainer.logger` names, as (class, init arguments)."""
    t = recipe.trainer
    specs: list[tuple[type, dict[str, Any]]] = []
    has_tensorboard = importlib.util.find_spec("tensorboard") is not None
    if t.logger in ("auto", "csv", "both"):
        specs.append((CSVLogger, {"save_dir": t.out_dir, "name": "logs"}))
    if t.logger in ("tensorboard", "both") or (t.logger == "auto" and has_tensorboard):
        if not has_tensorboard:
            raise MoelightError("trainer.logger: tensorboard is not installed (pip install tensorboard)")
        specs.append((TensorBoardLogger, {"save_dir": t.out_dir, "name": "tb"}))
    return specs


def build_loggers(recipe: Recipe) -> list:
    return [cls(**kwargs) for cls, kwargs in logger_specs(recipe)]


def strategy_spec(recipe: Recipe) -> tuple[type, dict[str, Any]] | str:
    """`parallel.fsdp` selects fsdp_expert_parallel (FSDP2 x EP, any P); otherwise
    `parallel.expert_parallel` > 1 selects the expert_parallel strategy (DDP x EP) with that P.
    (Its collective timeout is added where the strategy is built: collective_timeout.py.)"""
    p = recipe.parallel
    if p.fsdp:
        return FSDPExpertParallelStrategy, {
            "expert_parallel": p.expert_parallel,
            "param_dtype": p.param_dtype,
            "cpu_offload": p.cpu_offload,
        }
    if p.expert_parallel > 1:
        return ExpertParallelStrategy, {"expert_parallel": p.expert_parallel}
    return "auto"


def collective_timeout(recipe: Recipe) -> timedelta:
    return timedelta(seconds=recipe.parallel.collective_timeout_s)


def build_strategy(recipe: Recipe):
    spec = strategy_spec(recipe)
    t = recipe.trainer
    if isinstance(spec, str):
        return strategy_with_timeout(spec, collective_timeout(recipe), t.accelerator, t.devices, t.num_nodes)
    check_expert_parallel(recipe)
    cls, kwargs = spec
    return cls(**kwargs, timeout=collective_timeout(recipe))


def check_expert_parallel(recipe: Recipe) -> None:
    if recipe.parallel.expert_parallel > 1 or recipe.parallel.fsdp:
        check_expert_parallel_recipe(recipe)  # before launch: one clean error, not one per rank


def moelight_callbacks(
    recipe: Recipe, progress_bar: bool, has_loggers: bool, checkpointing: bool = True
) -> list[L.Callback]:
    """The epoch budget, the divergence and signal guards, the rank registry, the step progress bar, the LR monitor,
    and periodic and final checkpoints under out_dir."""
    t = recipe.trainer
    callbacks: list[L.Callback] = [
        EpochBudget(),  # sets max_steps from trainer.max_epochs before the LR schedule is built
        NonFiniteGuard(t.on_nonfinite, t.max_nonfinite_skips),
        PreemptionGuard(),
        TrainingStarted(),  # after PreemptionGuard: from here on it handles the signals
        RankRegistry(t.out_dir),
    ]
    if progress_bar:  # a live bar on a terminal; plain lines that survive a log file otherwise
        callbacks.append(StepProgressBar() if sys.stdout.isatty() else PlainProgress())
    callbacks.append(RunRecord(t.out_dir, checkpoint_dir(recipe), plots=t.plots))  # history, summary, plots/
    if has_loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if not checkpointing:  # Trainer(enable_checkpointing=False) refuses checkpoint callbacks
        return callbacks
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir(recipe),
        filename="step{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=recipe.trainer.checkpoint_every_n_steps,
        save_last=True,
        save_top_k=1,
        monitor=None,
        enable_version_counter=False,  # a moved or resumed run dir keeps its last.ckpt (no last-v1)
    )
    return [checkpoint, SaveLast(checkpoint)] + callbacks


def with_atomic_io(plugins: list | None) -> list:
    """Checkpoint files are written atomically unless the user brings their own CheckpointIO."""
    plugins = list(plugins or [])
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def build_trainer(recipe: Recipe, callbacks: list | None = None, **overrides) -> L.Trainer:
    kwargs = trainer_arguments(recipe)
    kwargs.update(logger=build_loggers(recipe) or False, strategy=build_strategy(recipe))
    kwargs.update(overrides)
    own = moelight_callbacks(recipe, kwargs["enable_progress_bar"], bool(kwargs["logger"]))
    kwargs["callbacks"] = own + list(callbacks or [])
    kwargs["plugins"] = with_atomic_io(kwargs.get("plugins"))
    return L.Trainer(**kwargs)
