"""The CPU-checkable parts of benchmarks/gpu_check.sh: the driver without CUDA, the table writer,
and the real-shape slices it measures (valid recipes that build)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
spec.loader.exec_module(gpu_check)


def test_the_shell_script_runs_the_driver():
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert "benchmarks/gpu_check.py" in text
    assert (ROOT / "benchmarks" / "gpu_check.sh").stat().st_mode & 0o111


def test_dry_run_writes_every_step_as_skipped(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nearlier text\n")
    assert gpu_check.main(["--dry-run", "--docs", str(docs)]) == 0
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nearlier text")
    for step in gpu_check.planned_steps():
        assert f"| {step} | dry run |" in text
    assert torch.__version__ in text and "benchmarks/gpu_check.sh --dry-run" in text


def test_tables_append_under_one_heading(tmp_path):
    docs = tmp_path / "b.md"
    env = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.13.0", "cuda": "12.8", "date": "2026-12-06 20:00 UTC"}
    rows = [gpu_check.Row("pytest -m gpu", "ok", "5 passed"), gpu_check.Row("memory x", "ok", "a | b")]
    gpu_check.append_table(docs, gpu_check.table(rows, env, "benchmarks/gpu_check.sh"))
    gpu_check.append_table(docs, gpu_check.table(rows[:1], env | {"date": "2026-12-07 09:00 UTC"}, "cmd"))
    text = docs.read_text()
    assert text.count("## GPU check (benchmarks/gpu_check.sh)") == 1
    assert text.index("2026-12-06 20:00") < text.index("2026-12-07 09:00")
    assert "NVIDIA H100 80GB HBM3" in text and "torch 2.13.0, CUDA 12.8" in text
    assert "| memory x | ok | a / b |" in text  # a pipe in a detail cannot break the table


@pytest.mark.parametrize("preset", list(gpu_check.PAPER))
def test_the_memory_slices_are_real_shape_recipes_that_build(preset):
    from moelight.model.build import build_model, layer_contexts

    recipe = gpu_check.slice_recipe(preset, "full")
    contexts = layer_contexts(recipe)
    assert recipe.model.n_layers == 1 and recipe.data.seq_len == 2048
    assert recipe.model.hidden_size in (2048, 4096)  # the paper models' true widths
    with torch.device("meta"):
        model = build_model(recipe, contexts=contexts)
    assert len(model.moe_layers) == 1
