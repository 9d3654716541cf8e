"""`moelight fit [RECIPE] [overrides] [--resume last|PATH] [--trainer.<Trainer argument> ...]`.

Argument routing: fit_args.py; the LightningCLI over the recipe: lightning_cli.py.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console

from moelight.checkpoint.storage import storage_errors
from moelight.cli.fit_args import split_fit_args
from moelight.cli.lightning_cli import MoelightCLI
from moelight.model.build import build_model, count_parameters, flops_per_token, layer_contexts
from moelight.parallel.liveness import peer_failures
from moelight.recipe import Recipe, load_recipe
from moelight.training.outside_loop_signals import Interrupted, held, late_signal, signals_outside_training
from moelight.training.run_dir import prepare_run
from moelight.training.signals import exit_code, stop_signal
from moelight.training.trainer import checkpoint_dir

console = Console()


def report_model(recipe: Recipe) -> None:
    contexts = layer_contexts(recipe)  # reads profile and placement files, so outside the meta block
    with torch.device("meta"):  # builds every plugin (validating it) without allocating weights
        model = build_model(recipe, contexts=contexts)
    counts = count_parameters(model, recipe)
    console.print(
        f"[bold]model[/]: {counts['total'] / 1e6:.2f}M parameters "
        f"({counts['active'] / 1e6:.2f}M active per token; experts {counts['experts'] / 1e6:.2f}M), "
        f"{recipe.model.num_experts} experts top-{recipe.model.top_k}, router [cyan]{recipe.router['name']}[/], "
        f"dispatcher [cyan]{recipe.dispatcher['name']}[/], "
        f"{flops_per_token(model, recipe) / 1e6:.1f} MFLOP/token (train)"
    )


def run(argv: list[str]) -> int:
    with signals_outside_training():
        try:
            return _run(argv)
        except Interrupted as exc:
            console.print(f"[yellow]{exc.signal.name}: interrupted before training started, nothing saved[/]")
            return exit_code(exc.signal)


def _run(argv: list[str]) -> int:
    args = split_fit_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    try:
        cli = MoelightCLI(recipe, args.lightning, build=not args.print_recipe)
    except SystemExit as exc:  # --help and --print_config print, then exit
        return int(exc.code or 0)
    if args.print_recipe:
        print(cli.recipe.to_yaml())
        return 0
    # The one resume/overwrite decision, on the recipe as parsed (--trainer.* flags included);
    # it refuses a mismatching resume before anything in the run directory is written.
    with held():  # may move an earlier run aside: never half done
        ckpt_path = prepare_run(cli.recipe, args.resume, args.overwrite)
    return fit_cli(cli, ckpt_path)


def fit(recipe: Recipe, ckpt_path: str | None = None, trainer_args: list[str] | None = None) -> int:
    """Train `recipe` from Python (`trainer_args`: `--trainer.*` flags as on the command line)."""
    return fit_cli(MoelightCLI(recipe, list(trainer_args or [])), ckpt_path)


def fit_cli(cli: MoelightCLI, ckpt_path: str | None = None) -> int:
    recipe, trainer = cli.recipe, cli.trainer
    # An existing checkpoint directory is expected here: `run` already refused a silent overwrite.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    report_model(recipe)
    Path(recipe.trainer.out_dir).mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero:
        with held():
            (Path(recipe.trainer.out_dir) / "recipe.yaml").write_text(recipe.to_yaml())
    start = time.perf_counter()
    try:
        t = recipe.trainer
        with (
            storage_errors(t.out_dir),
            peer_failures(trainer, t.out_dir, recipe.parallel.collective_timeout_s),
        ):
            # weights_only: a checkpoint file is data; unpickling it must never run code
            trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        pass  # Lightning's SystemExit(None) would exit 0; handled below
    wall = time.perf_counter() - start
    stopped_by = stop_signal(trainer)
    if stopped_by is not None:
        # Schedulers must see a preemption as a failure so that they requeue the job.
        console.print(
            f"[yellow]stopped by {stopped_by.name} at step {trainer.global_step}; last.ckpt is saved[/]"
        )
        return exit_code(stopped_by)
    if trainer.is_global_zero:
        val = trainer.callback_metrics.get("val/loss")
        val_text = f"val loss {float(val):.4f}, " if val is not None else ""
        console.print(
            f"[bold green]done[/]: {trainer.global_step} steps in {wall:.1f}s, {val_text}"
            f"checkpoints in {checkpoint_dir(recipe)}"
        )
    late = late_signal(trainer)
    if late is not None:  # the run completed; the exit status still says it was asked to stop
        if trainer.is_global_zero:
            console.print(
                f"[yellow]{late.name} after the last step: the run completed and its final checkpoint "
                f"(step {trainer.global_step}) is saved[/]"
            )
        return exit_code(late)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
