"""Training and profiling stages shared by the quality benchmarks beside it (c2r_workflow.py,
frontier.py), imported as `from stages import ...` (the scripts' own directory is on sys.path).

Each stage writes into its own directory and, with `reuse`, is skipped when its output exists,
so an interrupted benchmark resumes and a report can be rebuilt without training again. (Not in
moelight.bench: it drives the `fit` and `profile` verbs, and moelight.cli already imports
moelight.bench.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from moelight.cli.fit import fit
from moelight.cli.profile import profile
from moelight.recipe import load_recipe


def slug(text: str) -> str:
    """A run-directory name from an arm's label ("C2R T=1" -> "C2R_T_1")."""
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def fit_run(recipe_file: Path, overrides: list[str], out_dir: Path, reuse: bool) -> tuple[Path, float]:
    """Train `recipe_file` with `overrides` into `out_dir`: (last checkpoint, seconds; NaN if reused)."""
    ckpt = out_dir / "checkpoints" / "last.ckpt"
    if reuse and ckpt.is_file():
        print(f"reuse {ckpt}")
        return ckpt, float("nan")
    recipe = load_recipe(recipe_file, [*overrides, f"trainer.out_dir={out_dir}"])
    start = time.perf_counter()
    code = fit(recipe)
    if code != 0 or not ckpt.is_file():
        raise SystemExit(f"training {out_dir} failed (exit {code})")
    return ckpt, time.perf_counter() - start


def profile_run(ckpt: Path, out_dir: Path, reuse: bool, max_tokens: int | None = None) -> dict[str, Any]:
    """`moelight profile` of `ckpt` (placements on 2 and 4 devices) into `out_dir`: its profile.json."""
    meta_file = out_dir / "profile.json"
    if not (reuse and meta_file.is_file()):
        profile(str(ckpt), str(out_dir), max_tokens=max_tokens, devices=[2, 4], quiet=True)
    return json.loads(meta_file.read_text())
