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

from moelight.cli.fit_args import split_fit_args
from moelight.cli.lightning_cli import MoelightCLI
from moelight.errors import MoelightError
from moelight.recipe import Recipe, load_recipe
from moelight.training.checkpoint_io import check_checkpoint_file
from moelight.training.trainer import checkpoint_dir

console = Console()


def resolve_resume(recipe: Recipe, resume: str | None) -> str | None:
    if resume is None:
        return None
    if resume == "last":
        candidates = [checkpoint_dir(recipe) / "last.ckpt", checkpoint_dir(recipe) / "last"]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise MoelightError(
                f"--resume last: no checkpoint in {checkpoint_dir(recipe)} (train first, or set trainer.out_dir)"
            )
        resume = str(found)
    if Path(resume).is_dir():
        return resolve_sharded(recipe, Path(resume))
    check_checkpoint_file(resume)
    return resume


def resolve_sharded(recipe: Recipe, path: Path) -> str:
    """A sharded (expert-parallel) checkpoint directory: refuse it unless complete; without expert
    parallelism, Lightning loads ordinary files, so gather the shards into one (once, kept beside them)."""
    from moelight.parallel.checkpoint import check_sharded, consolidated

    if recipe.parallel.expert_parallel > 1:
        check_sharded(path)
        return str(path)  # the expert_parallel strategy reads (and reshards) it
    return str(consolidated(path))  # checks it too


def report_model(recipe: Recipe) -> None:
    from moelight.model.build import build_model, count_parameters, flops_per_token, layer_contexts

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
    args = split_fit_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    try:
        cli = MoelightCLI(recipe, args.lightning, build=not args.print_recipe)
    except SystemExit as exc:  # --help and --print_config print, then exit
        return int(exc.code or 0)
    if args.print_recipe:
        print(cli.recipe.to_yaml())
        return 0
    ckpt_path = prepare_run_dir(cli.recipe, args.resume, args.overwrite)
    return fit_cli(cli, ckpt_path)


def prepare_run_dir(recipe: Recipe, resume: str | None, overwrite: bool) -> str | None:
    """The one place that decides between resuming and a fresh start: the checkpoint to resume
    from, or None after making sure a fresh run replaces no earlier run's checkpoints unasked."""
    ckpt_path = resolve_resume(recipe, resume)
    if ckpt_path is None and not overwrite:
        refuse_to_overwrite(recipe)
    return ckpt_path


def refuse_to_overwrite(recipe: Recipe) -> None:
    """A fresh run would replace an earlier run's checkpoints: make the user say which they mean."""
    existing = checkpoint_dir(recipe)
    if existing.is_dir() and any(existing.iterdir()):
        raise MoelightError(
            f"{existing} already holds checkpoints of an earlier run; continue it with --resume last, "
            "start afresh over it with --overwrite, or set another trainer.out_dir"
        )


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
        (Path(recipe.trainer.out_dir) / "recipe.yaml").write_text(recipe.to_yaml())
    start = time.perf_counter()
    try:
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        pass  # Lightning's SystemExit(None) would exit 0; handled below
    wall = time.perf_counter() - start
    if trainer.received_sigterm:
        # Schedulers must see a preemption as a failure so that they requeue the job.
        console.print(f"[yellow]stopped by SIGTERM at step {trainer.global_step}; last.ckpt is saved[/]")
        return 143
    if trainer.is_global_zero:
        val = trainer.callback_metrics.get("val/loss")
        val_text = f"val loss {float(val):.4f}, " if val is not None else ""
        console.print(
            f"[bold green]done[/]: {trainer.global_step} steps in {wall:.1f}s, {val_text}"
            f"checkpoints in {checkpoint_dir(recipe)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
