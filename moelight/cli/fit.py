"""`moelight fit [RECIPE] [overrides] [--resume last|PATH] [--trainer.<Trainer argument> ...]`.

Argument routing: fit_args.py; the LightningCLI over the recipe: lightning_cli.py.
"""

from __future__ import annotations

import sys
import time
import warnings
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console

from moelight.checkpoint.storage import storage_errors
from moelight.cli.fit_args import split_fit_args
from moelight.cli.lightning_cli import MoelightCLI
from moelight.memory.fit_check import check_fits
from moelight.model.build import build_model, count_parameters, flops_per_token, layer_contexts
from moelight.parallel.liveness import peer_failures
from moelight.recipe import Recipe, load_recipe
from moelight.training.outside_loop_signals import Interrupted, held, late_signal, signals_outside_training
from moelight.training.preflight import check_inputs
from moelight.training.run_dir import is_first_process, prepare_run
from moelight.training.run_lock import run_lock
from moelight.training.run_record import RunRecord
from moelight.training.signals import exit_code, stop_signal
from moelight.training.startup_signals import end_launched_rank
from moelight.training.threads import choose_threads

console = Console()


def model_header(recipe: Recipe) -> str:
    """The one-line model header, with global counts (all experts, whatever the expert-parallel
    size). Building the model on the meta device validates every plugin against the model."""
    contexts = layer_contexts(recipe)  # reads profile and placement files, so outside the meta block
    with torch.device("meta"):  # builds every plugin (validating it) without allocating weights
        model = build_model(recipe, contexts=contexts)
    counts = count_parameters(model, recipe)
    return (
        f"[bold]model[/]: {counts['total'] / 1e6:.2f}M parameters "
        f"({counts['active'] / 1e6:.2f}M active per token; experts {counts['experts'] / 1e6:.2f}M), "
        f"{recipe.model.num_experts} experts top-{recipe.model.top_k}, router [cyan]{recipe.router['name']}[/], "
        f"dispatcher [cyan]{recipe.dispatcher['name']}[/], "
        f"{flops_per_token(model, recipe) / 1e6:.1f} MFLOP/token (train)"
    )


def print_summary(trainer, recipe: Recipe, wall: float) -> None:
    """The run's summary (RunRecord's: best/last val loss, mean tokens/s), with the fit's wall time."""
    record = next((c for c in trainer.callbacks if isinstance(c, RunRecord)), None)
    if record is None or record.summary is None:
        console.print(f"[bold green]done[/]: {trainer.global_step} steps in {wall:.1f}s")
        return
    lines = replace(record.summary, wall_s=wall).lines("[bold green]done[/]")
    plots = Path(recipe.trainer.out_dir) / "plots"
    if plots.is_dir():
        lines.append(f"  plots: {plots}/ (moelight report {recipe.trainer.out_dir})")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def run(argv: list[str]) -> int:
    with signals_outside_training():
        try:
            return _run(argv)
        except Interrupted as exc:
            console.print(f"[yellow]{exc.signal.name}: interrupted before training started, nothing saved[/]")
            end_launched_rank(exc.signal)  # a launched rank must not end first (the launcher SIGKILLs all)
            return exit_code(exc.signal)


def _run(argv: list[str]) -> int:
    args = split_fit_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    if not args.print_recipe:  # before the Trainer, the model or the run directory exist
        check_fits(recipe, force=args.force)
    try:
        cli = MoelightCLI(recipe, args.lightning, build=False, overrides=args.overrides)
    except SystemExit as exc:  # --print_config prints, then exits
        return int(exc.code or 0)
    if args.print_recipe:
        print(cli.recipe.to_yaml())
        return 0
    header = model_header(cli.recipe)  # the recipe's errors come before the run directory's
    check_inputs(cli.recipe)  # init_from, profile.path, placement: before anything is written
    with ExitStack() as stack:
        # One run per directory, locked before anything in it is written; the other ranks that
        # Lightning's launcher starts re-run this command line and must not wait for the lock.
        if is_first_process():
            stack.enter_context(run_lock(cli.recipe.trainer.out_dir))
        # The one resume/overwrite decision, on the recipe as parsed (--trainer.* flags included);
        # it refuses a mismatching resume before anything else in the run directory is written.
        with held():  # may move an earlier run aside: never half done
            ckpt_path = prepare_run(cli.recipe, args.resume, args.overwrite)
        threads = choose_threads()  # CPU runs on a busy machine: the idle cores (threads.py)
        cli.build_classes()
        return fit_cli(cli, ckpt_path, f"{header}, {threads} CPU thread{'s' * (threads > 1)}")


def fit(recipe: Recipe, ckpt_path: str | None = None, trainer_args: list[str] | None = None) -> int:
    """Train `recipe` from Python (`trainer_args`: `--trainer.*` flags as on the command line)."""
    cli = MoelightCLI(recipe, list(trainer_args or []))
    check_fits(cli.recipe)
    return fit_cli(cli, ckpt_path)


def fit_cli(cli: MoelightCLI, ckpt_path: str | None = None, header: str | None = None) -> int:
    recipe, trainer = cli.recipe, cli.trainer
    # An existing checkpoint directory is expected here: `run` already refused a silent overwrite.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    header = header or model_header(recipe)
    if trainer.is_global_zero:  # one header per job, not one per rank
        console.print(header, soft_wrap=True)  # one line, also in a log file
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
        print_summary(trainer, recipe, wall)
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
