"""`moelight fit [RECIPE] [overrides] [--resume last|PATH]`."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console

from moelight.cli.args import split_args
from moelight.parallel.liveness import peer_failures
from moelight.recipe import Recipe, load_recipe
from moelight.training.run_dir import prepare_run
from moelight.training.signals import exit_code, stop_signal
from moelight.training.storage import storage_errors
from moelight.training.trainer import build_trainer, checkpoint_dir

HELP = """usage: moelight fit [RECIPE.yaml] [key.path=value | --key.path value ...] [--resume last|PATH]

Train the model a recipe describes. Without a recipe, the embedded default (recipes/quickstart.yaml)
is used. Overrides are parsed as YAML scalars, e.g. trainer.max_steps=50 --router.name c2r.
  --resume last   continue from the newest complete checkpoint in <trainer.out_dir>/checkpoints
                  (step count and data position); model, router and optim must match its recipe
  --resume PATH   continue from a given checkpoint (a file, or an expert-parallel checkpoint directory,
                  which resumes at any parallel.expert_parallel)
  --overwrite     start afresh although trainer.out_dir holds an earlier run: its checkpoints and
                  recipe.yaml are moved to <trainer.out_dir>/replaced/<UTC time>/ (nothing is deleted)
  --print-recipe  print the validated recipe and exit
"""

console = Console()


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
    if any(a in ("-h", "--help") for a in argv):
        print(HELP)
        return 0
    args = split_args(argv, value_flags=("--resume",), bool_flags=("--print-recipe", "--overwrite"))
    recipe = load_recipe(args.recipe, args.overrides)
    if args.flags.get("--print-recipe"):
        print(recipe.to_yaml())
        return 0
    ckpt_path = prepare_run(recipe, args.flags.get("--resume"), bool(args.flags.get("--overwrite")))
    return fit(recipe, ckpt_path)


def fit(recipe: Recipe, ckpt_path: str | None = None) -> int:
    from moelight.data.datamodule import MoEDataModule
    from moelight.training.module import MoELanguageModel

    # An existing checkpoint directory is expected here: `run` already refused a silent overwrite.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    report_model(recipe)
    datamodule = MoEDataModule(recipe.data, seed=recipe.seed)
    module = MoELanguageModel(recipe)
    trainer = build_trainer(recipe)
    Path(recipe.trainer.out_dir).mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero:
        (Path(recipe.trainer.out_dir) / "recipe.yaml").write_text(recipe.to_yaml())
    start = time.perf_counter()
    try:
        t = recipe.trainer
        with (
            storage_errors(t.out_dir),
            peer_failures(trainer, t.out_dir, recipe.parallel.collective_timeout_s),
        ):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
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
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
