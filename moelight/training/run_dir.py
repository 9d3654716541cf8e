"""The run directory (`trainer.out_dir`) before training starts: which checkpoint to resume, if any.

`prepare_run` is the one call the CLI makes, before anything in the run directory is written:

- a fresh run refuses to mix with an earlier run's checkpoints, unless `--overwrite`, which MOVES
  them (and the earlier `recipe.yaml`) aside to `<out_dir>/replaced/<UTC time>/`, so no later
  `--resume last` can pick them up and nothing is deleted;
- `--resume last` takes the newest complete checkpoint of the directory, whatever its name
  (`last.ckpt`, `step000040.ckpt`, a sharded directory): newest = highest step, then latest
  written; a moved or copied run directory resumes the same way;
- a resumed checkpoint must come from the same model: `model.*` (but `init_from`), `router.*`
  and `optim.*` must equal the checkpoint's (its optimizer state and schedule are restored, so a
  changed optimizer value would not take effect); `trainer.max_steps` must lie beyond its step.
  Anything else (data, trainer, parallel layout, dispatcher) may change.

Every rank runs this (Lightning re-runs the command line per rank); only the first process
moves files.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from moelight.checkpoint.files import check_checkpoint_file, checkpoint_corrupt
from moelight.errors import MoelightError
from moelight.parallel.checkpoint import MARKER_FILE, check_sharded, consolidated_file, read_meta
from moelight.recipe import Recipe, validate_recipe

CHECKPOINTS = "checkpoints"
REPLACED = "replaced"
MUST_MATCH = ("model", "router", "optim")
MAY_DIFFER = {("model", "init_from")}


def checkpoints_of(recipe: Recipe) -> Path:
    return Path(recipe.trainer.out_dir) / CHECKPOINTS


def is_first_process() -> bool:
    """The process that launches the others (or rank 0 of torchrun/SLURM)."""
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


# ---- reading checkpoints cheaply ---------------------------------------------------------------


def _marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def checkpoint_step(path: Path) -> int | None:
    """The global step a checkpoint holds, without reading its tensors; None if unreadable."""
    if path.is_dir():
        marker = _marker(path)
        return None if marker is None else marker.get("step")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # incomplete or foreign: not a candidate
        return None
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    return step if isinstance(step, int) else None


def saved_recipe(path: Path) -> dict[str, Any] | None:
    """The recipe a moelight checkpoint was trained with (None for foreign checkpoints)."""
    if path.is_dir():
        ckpt = read_meta(path)
    else:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            raise checkpoint_corrupt(path, "not a readable torch checkpoint") from None
    recipe = (ckpt.get("hyper_parameters") or {}).get("recipe") if isinstance(ckpt, dict) else None
    return recipe if isinstance(recipe, dict) else None


def newest_checkpoint(directory: Path) -> tuple[Path, int]:
    """The complete checkpoint of `directory` with the highest step (latest written on a tie)."""
    found = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(".") or p.suffix != ".ckpt":
                continue  # `.x.partial`: a save in progress or interrupted
            step = checkpoint_step(p)
            if step is not None:
                found.append((step, p.stat().st_mtime_ns, p))
    for step, _, path in sorted(found, reverse=True):
        try:
            check_complete(path)
        except MoelightError:
            continue  # damaged: fall back to the next newest
        return path, step
    raise MoelightError(
        f"--resume last: no complete checkpoint in {directory} (train first, or set trainer.out_dir)"
    )


def check_complete(path: Path) -> None:
    if path.is_dir():
        check_sharded(path)
    else:
        check_checkpoint_file(path)


# ---- the same run? ---------------------------------------------------------------------------


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: list(node) if isinstance(node, tuple) else node}


def differing_fields(recipe: Recipe, saved: dict[str, Any]) -> list[str]:
    """`field (checkpoint X, now Y)` for every must-match field that differs."""
    # Both sides with today's defaults, the plugins' parameters included, so that new optional
    # fields and a section that named only its plugin (`router: {name: topk}`) do not count.
    try:
        saved = validate_recipe(saved).full_dump()
    except MoelightError:
        pass  # its plugins are gone or its fields changed: compare the raw values
    now = recipe.full_dump()
    out = []
    for section in MUST_MATCH:
        old, new = _flatten(saved.get(section, {}), section), _flatten(now[section], section)
        for key in sorted(set(old) | set(new)):
            if tuple(key.split(".")[:2]) in MAY_DIFFER:
                continue
            if old.get(key, "unset") != new.get(key, "unset"):
                out.append(f"{key} (checkpoint {old.get(key, 'unset')!r}, now {new.get(key, 'unset')!r})")
    return out


def check_same_run(recipe: Recipe, path: Path, step: int) -> None:
    saved = saved_recipe(path)
    if saved is not None:
        diffs = differing_fields(recipe, saved)
        if diffs:
            raise MoelightError(
                f"--resume {path}: the recipe differs from the checkpoint's in {', '.join(diffs)}; "
                "a resume continues the same model and optimizer, so use the checkpoint's values, or "
                f"start a new run from its weights with model.init_from={path}"
            )
    t = recipe.trainer
    steps_known = t.max_epochs is None or "max_steps" in t.model_fields_set  # else: from the data
    if steps_known and t.max_steps <= step:
        raise MoelightError(
            f"--resume {path}: the checkpoint is at step {step} and trainer.max_steps is "
            f"{recipe.trainer.max_steps}: nothing to train; raise trainer.max_steps above {step}"
        )


# ---- fresh runs ------------------------------------------------------------------------------


def move_aside(recipe: Recipe) -> Path | None:
    """Move an earlier run's checkpoints and recipe.yaml to `<out_dir>/replaced/<UTC time>/`."""
    out = Path(recipe.trainer.out_dir)
    earlier = [p for p in (out / CHECKPOINTS, out / "recipe.yaml") if p.exists()]
    if not earlier:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = out / REPLACED / stamp
    n = 1
    while target.exists():
        target, n = out / REPLACED / f"{stamp}-{n}", n + 1
    target.mkdir(parents=True)
    for p in earlier:
        shutil.move(str(p), target / p.name)  # same filesystem: a rename
    return target


def refuse_to_overwrite(recipe: Recipe) -> None:
    existing = checkpoints_of(recipe)
    if existing.is_dir() and any(not p.name.startswith(".") for p in existing.iterdir()):  # .partial: no
        raise MoelightError(
            f"{existing} already holds checkpoints of an earlier run; continue it with --resume last, "
            "start afresh with --overwrite (moves them to "
            f"{Path(recipe.trainer.out_dir) / REPLACED}/<time>/), or set another trainer.out_dir"
        )


def check_writable(recipe: Recipe) -> None:
    """The run directory can be written (created if needed): probe it with a file."""
    out = Path(recipe.trainer.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MoelightError(
            f"trainer.out_dir {out} is not writable ({exc.strerror or exc}); choose a writable directory"
        ) from None


# ---- the one entry point -----------------------------------------------------------------------


def prepare_run(recipe: Recipe, resume: str | None = None, overwrite: bool = False) -> str | None:
    """Validate the run directory against `--resume`/`--overwrite`; the checkpoint to resume or None.

    Raises MoelightError (exit 2) before anything in the run directory is written.
    """
    if resume is not None and overwrite:
        raise MoelightError("--resume and --overwrite exclude each other: continue a run, or replace it")
    if resume is None:
        if is_first_process():
            if not overwrite:
                refuse_to_overwrite(recipe)
            check_writable(recipe)
            moved = move_aside(recipe) if overwrite else None
            if moved is not None:
                print(f"--overwrite: the earlier run's checkpoints and recipe were moved to {moved}")
        return None
    if resume == "last":
        path, step = newest_checkpoint(checkpoints_of(recipe))
    else:
        path = Path(resume)
        check_complete(path)
        step = checkpoint_step(path)
        if step is None:
            raise checkpoint_corrupt(path, "it holds no training step (not a Lightning checkpoint)")
    check_same_run(recipe, path, step)
    if is_first_process():
        check_writable(recipe)
    if path.is_dir() and recipe.parallel.expert_parallel == 1 and not recipe.parallel.fsdp:
        return str(consolidated_file(path))  # Lightning loads ordinary files: gather the shards once
    return str(path)
