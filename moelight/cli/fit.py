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

from moelight.checkpoint.files import check_checkpoint_file
from moelight.cli.args import split_args
from moelight.errors import MoelightError
from moelight.recipe import Recipe, load_recipe
from moelight.training.trainer import build_trainer, checkpoint_dir

HELP = """usage: moelight fit [RECIPE.yaml] [key.path=value | --key.path value ...] [--resume last|PATH]

Train the model a recipe describes. Without a recipe, the embedded default (recipes/quickstart.yaml)
is used. Overrides are parsed as YAML scalars, e.g. trainer.max_steps=50 --router.name c2r.
  --resume last   continue from <trainer.out_dir>/checkpoints/last.ckpt (step count and data position)
  --resume PATH   continue from a given checkpoint (a file, or an expert-parallel checkpoint directory,
                  which resumes at any parallel.expert_parallel)
  --overwrite     start afresh even though trainer.out_dir already holds checkpoints (they are
                  replaced as the new run saves)
  --print-recipe  print the validated recipe and exit
"""

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
    from moelight.parallel.checkpoint import check_sharded, consolidated_file

    if recipe.parallel.expert_parallel > 1:
        check_sharded(path)
        return str(path)  # the expert_parallel strategy reads (and reshards) it
    return str(consolidated_file(path))  # checks it too


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
    ckpt_path = resolve_resume(recipe, args.flags.get("--resume"))
    if ckpt_path is None and not args.flags.get("--overwrite"):
        refuse_to_overwrite(recipe)
    return fit(recipe, ckpt_path)


def refuse_to_overwrite(recipe: Recipe) -> None:
    """A fresh run would replace an earlier run's checkpoints: make the user say which they mean."""
    existing = checkpoint_dir(recipe)
    if existing.is_dir() and any(existing.iterdir()):
        raise MoelightError(
            f"{existing} already holds checkpoints of an earlier run; continue it with --resume last, "
            "start afresh over it with --overwrite, or set another trainer.out_dir"
        )


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
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
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
