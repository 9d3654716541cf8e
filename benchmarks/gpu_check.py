"""The GPU readiness check: everything worth running in a short GPU loan, in one command.

    benchmarks/gpu_check.sh [--dry-run] [--docs docs/benchmarks.md] [--budget-s 480]

1. `pytest -m gpu` (the GPU-marked tests);
2. the MoE layer benchmark at both paper shapes: grouplocal vs MegaBlocks (and sorted), bf16,
   `moelight bench layer --preset qwen1.5-moe-a2.7b|llama-moe-3.5b` (MegaBlocks absent: said so);
3. the memory check: one real-shape slice of each paper model (its embedding, one MoE block and
   its output head, at 1 x 2048 tokens, bf16-mixed, full and no checkpointing), measured
   `torch.cuda.max_memory_allocated` beside `moelight bench memory`'s plan of the same slice.
Each step has a time limit inside the budget; a step that fails or times out is reported as such
and the next one runs. The results are appended to docs/benchmarks.md as a dated table with the
GPU name, torch and CUDA versions and the command. `--dry-run` (or no CUDA) writes the table of
what would run, marked skipped, to the given --docs file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = {
    "qwen1.5-moe-a2.7b": "recipes/qwen-moe-c2r-sft.yaml",
    "llama-moe-3.5b": "recipes/llama-moe-c2r-sft.yaml",
}
SLICE = ["model.n_layers=1", "data.batch_size=1", "data.seq_len=2048", "trainer.precision=bf16-mixed"]


@dataclass
class Row:
    step: str
    result: str
    detail: str = ""


def run_command(cmd: list[str], timeout: float) -> tuple[int | None, str]:
    """(exit status or None on time-out, the output's last lines)."""
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    tail = (done.stdout + done.stderr).strip().splitlines()[-12:]
    return done.returncode, "\n".join(tail)


def megablocks_available() -> bool:
    try:
        import megablocks  # noqa: F401
    except Exception:
        return False
    return True


def pytest_step(timeout: float) -> Row:
    code, tail = run_command(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"], timeout
    )
    last = tail.splitlines()[-1] if tail else ""
    return Row(
        "pytest -m gpu", "ok" if code == 0 else ("timed out" if code is None else f"exit {code}"), last
    )


def layer_step(preset: str, timeout: float, out_dir: Path) -> Row:
    names = ["grouplocal", "sorted"] + (["megablocks"] if megablocks_available() else [])
    base = "megablocks" if "megablocks" in names else "sorted"
    out = out_dir / f"layer-{preset}.json"
    cmd = [
        sys.executable,
        "-m",
        "moelight",
        "bench",
        "layer",
        "--preset",
        preset,
        "--device",
        "cuda",
        "--dispatchers",
        ",".join(names),
        "--baseline",
        base,
        "--repeats",
        "20",
        "--json",
        str(out),
    ]
    code, tail = run_command(cmd, timeout)
    note = "" if "megablocks" in names else "MegaBlocks absent (not installed); "
    if code == 0 and out.is_file():
        data = json.loads(out.read_text())
        ratios = {c.get("label", c.get("name")): c.get("speedup") for c in data.get("candidates", [])}
        return Row(f"layer {preset}", "ok", note + f"speed-up vs {base}: {ratios}")
    return Row(
        f"layer {preset}",
        "timed out" if code is None else f"exit {code}",
        note + tail.splitlines()[-1:][0] if tail else note,
    )


def slice_recipe(preset: str, checkpointing: str):
    """The paper recipe cut to one MoE block at its true widths, on one GPU, random weights."""
    from moelight.recipe import load_recipe

    overrides = [
        *SLICE,
        f"trainer.activation_checkpointing={checkpointing}",
        "model.init_from=null",
        "parallel.expert_parallel=1",
        "trainer.devices=1",
        "router.name=topk",
        "profile.path=null",
    ]
    return load_recipe(ROOT / PAPER[preset], overrides)


def memory_step(preset: str, checkpointing: str) -> Row:
    from moelight.memory.measure import measured_cuda_peak
    from moelight.memory.plan import plan, setup_from_recipe

    recipe = slice_recipe(preset, checkpointing)
    planned = plan(recipe, setup_from_recipe(recipe, devices=1, expert_parallel=1, device="cuda")).peak
    measured = measured_cuda_peak(recipe)
    return Row(
        f"memory {preset} slice, checkpointing {checkpointing}",
        "ok" if abs(planned / measured - 1) <= 0.1 else "outside +-10%",
        f"plan {planned / 2**30:.2f} GiB, measured {measured / 2**30:.2f} GiB, ratio {planned / measured:.3f}",
    )


def environment() -> dict[str, str]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name(0) if cuda else "none (no CUDA)",
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def table(rows: list[Row], env: dict[str, str], command: str) -> str:
    lines = [
        f"### GPU check {env['date']}: {env['gpu']}",
        "",
        f"torch {env['torch']}, CUDA {env['cuda']}; command: `{command}`",
        "",
        "| step | result | detail |",
        "|---|---|---|",
    ]
    lines += [f"| {r.step} | {r.result} | {r.detail.replace('|', '/')} |" for r in rows]
    return "\n".join(lines) + "\n"


def append_table(path: Path, text: str) -> None:
    """Append under the `## GPU check (benchmarks/gpu_check.sh)` heading, creating it once."""
    heading = "## GPU check (benchmarks/gpu_check.sh)"
    old = path.read_text() if path.is_file() else ""
    if heading not in old:
        old = old.rstrip("\n") + f"\n\n{heading}\n"
    path.write_text(old.rstrip("\n") + "\n\n" + text)


def planned_steps() -> list[str]:
    steps = ["pytest -m gpu"] + [f"layer {p}" for p in PAPER]
    return steps + [f"memory {p} slice, checkpointing {c}" for p in PAPER for c in ("none", "full")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="write the table of steps, run none")
    ap.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"), help="the file the table goes to")
    ap.add_argument("--budget-s", type=float, default=480.0, help="total time budget (seconds)")
    a = ap.parse_args(argv)
    import torch

    env = environment()
    command = "benchmarks/gpu_check.sh " + shlex.join(argv if argv is not None else sys.argv[1:])
    if a.dry_run or not torch.cuda.is_available():
        why = "dry run" if a.dry_run else "skipped: no CUDA"
        rows = [Row(s, why) for s in planned_steps()]
    else:
        start, rows = time.monotonic(), []

        def left() -> float:
            return a.budget_s - (time.monotonic() - start)

        rows.append(pytest_step(min(150.0, left())))
        with tempfile.TemporaryDirectory() as tmp:
            for preset in PAPER:
                rows.append(layer_step(preset, min(100.0, max(10.0, left() - 60)), Path(tmp)))
        for preset in PAPER:
            for checkpointing in ("none", "full"):
                try:
                    rows.append(memory_step(preset, checkpointing))
                except Exception as exc:  # an OOM or a missing kernel is a result to report
                    rows.append(
                        Row(f"memory {preset} slice, checkpointing {checkpointing}", "error", str(exc)[:200])
                    )
                torch.cuda.empty_cache()
    text = table(rows, env, command)
    print(text)
    append_table(Path(a.docs), text)
    print(f"appended to {a.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
