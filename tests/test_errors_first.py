"""Errors are the first thing `moelight fit` prints: recipe errors before the run directory's, and
no Lightning "GPU available" lines before either; a missing optional package is one line with its
pip command."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

from moelight.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def fit_output(*argv: str, env: dict) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-m", "moelight", "fit", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env | {"COLUMNS": "80"},
        timeout=600,
    )
    return proc.returncode, [line for line in proc.stdout.splitlines() if line.strip()]


def earlier_run(out_dir: Path) -> None:
    """What an earlier run leaves: a checkpoint in out_dir/checkpoints."""
    (out_dir / "checkpoints").mkdir(parents=True)
    (out_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")


def test_readme_error_example_after_a_run_shows_the_recipe_error(tmp_path, run_env):
    """README: `moelight fit recipes/c2r.yaml model.top_k=4 router.top_t=2` names top_t, also when
    out_dir already holds an earlier run (the run-directory check comes after the recipe's)."""
    recipe = ROOT / "recipes/c2r.yaml"
    earlier_run(tmp_path / load_recipe(recipe).trainer.out_dir)
    code, lines = fit_output(str(recipe), "model.top_k=4", "router.top_t=2", env=run_env)
    assert code == 2
    assert lines[0].startswith("error: router.top_t: top_t = 2 must be >= top_k - 1"), lines
    assert len(lines) == 1


def test_run_directory_error_comes_before_lightning_lines(tmp_path, run_env):
    earlier_run(tmp_path / "run")
    code, lines = fit_output(*TINY, f"trainer.out_dir={tmp_path / 'run'}", env=run_env)
    assert code == 2
    assert len(lines) == 1 and "already holds checkpoints" in lines[0], lines


def test_trainer_error_comes_before_lightning_lines(tmp_path, run_env):
    """An error raised while the Trainer is built drops Lightning's device lines."""
    code, lines = fit_output(
        *TINY, f"trainer.out_dir={tmp_path / 'run'}", "--trainer.strategy", "no_such_strategy", env=run_env
    )
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: trainer: unknown strategy"), lines


def test_missing_logger_package_is_one_line_with_the_pip_command(tmp_path, run_env):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here: nothing is missing")
    code, lines = fit_output(
        *TINY, f"trainer.out_dir={tmp_path / 'run'}", "--trainer.logger+=WandbLogger", env=run_env
    )
    assert code == 2
    assert len(lines) == 1, lines
    assert "WandbLogger needs the package wandb" in lines[0] and "pip install" in lines[0]
