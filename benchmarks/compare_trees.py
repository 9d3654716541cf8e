"""Same benchmarks, two source trees (e.g. before and after a refactor), interleaved in one session.

    python benchmarks/compare_trees.py OLD_TREE NEW_TREE [--rounds 4] [--benches layer-tiny,step,ep]
                                       [--fit-steps 20] [--out bench-results/compare]

Each round runs every benchmark on both trees back to back (the tree that goes first alternates
between rounds), so load on a shared machine hits both alike. A tree runs with its own
interpreter (`TREE/.venv/bin/python` if present, else this one with `PYTHONPATH=TREE`), in its
own directory, one torch thread. Per benchmark and candidate: the per-round ratio new/old of the
median step time (median and min-max over rounds), and each tree's within-run speedup over the
run's baseline. `--fit-steps N` also trains the default recipe for N steps with a fixed seed in
each tree and compares the per-step training losses (bit-identical or not). Writes
`compare.json` and `compare.md` under --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from moelight.bench.timing import quantile

LAYER = ["--dispatchers", "sorted,grouplocal,hf-loop,gemm-only", "--baseline", "hf-loop"]
CPU = ["--device", "cpu", "--threads", "1"]
STEP = ["recipes/quickstart.yaml", "--dispatchers", "sorted,grouplocal,hf-loop", "--baseline", "hf-loop"]


def layer(preset: str, repeats: int) -> list[str]:
    return ["-m", "moelight", "bench", "layer", "--preset", preset, *LAYER, "--repeats", str(repeats), *CPU]


# name -> (arguments after the interpreter, the flag that takes the JSON path: None = time the
# whole command, e.g. the CLI's start-up)
BENCHES: dict[str, tuple[list[str], str | None]] = {
    "layer-tiny": (layer("cpu-tiny", 30), "--json"),
    "layer-small": (layer("cpu-small", 15), "--json"),
    "layer-many": (layer("cpu-many", 8), "--json"),
    "step": (["-m", "moelight", "bench", "step", *STEP, "--repeats", "10", "--warmup", "2", *CPU], "--json"),
    "ep": (["benchmarks/ep_cpu_compare.py", "--steps", "10", "--warmup", "2"], "--out"),
    "bench-help": (["-m", "moelight", "bench", "--help"], None),
}


def interpreter(tree: Path) -> tuple[str, dict[str, str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    venv = tree / ".venv" / "bin" / "python"
    if venv.exists():
        return str(venv), env
    return sys.executable, {**env, "PYTHONPATH": str(tree)}


def check_imports_from(tree: Path) -> None:
    """The tree's interpreter must import moelight from the tree (a stale editable install elsewhere
    would silently benchmark the wrong code)."""
    python, env = interpreter(tree)
    code = "import moelight; print(moelight.__file__)"
    found = subprocess.run([python, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    if not found.stdout.strip().startswith(str(tree)):
        raise SystemExit(
            f"{python} imports moelight from {found.stdout.strip() or found.stderr[-300:]}, not from {tree}"
        )


def run(tree: Path, args: list[str], log: Path) -> None:
    python, env = interpreter(tree)
    with log.open("w") as out:
        done = subprocess.run([python, *args], cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed in {tree} (exit {done.returncode}); see {log}")


def medians(path: Path) -> dict[str, tuple[float, float]]:
    """Candidate -> (median ms, within-run speedup over the baseline) from a bench JSON."""
    data = json.loads(path.read_text())
    if "meta" in data:  # benchmarks/ep_cpu_compare.py
        return {
            r["config"]: (r["step"]["median_ms"], r["speedup_vs_per_expert_median"]) for r in data["results"]
        }
    return {r["name"]: (r["median_ms"], r["speedup"]) for r in data["results"]}


def bench_args(name: str, out: Path) -> list[str]:
    args, flag = BENCHES[name]
    return [*args, flag, str(out)] if flag else list(args)


def timed_rounds(trees: dict[str, Path], benches: list[str], rounds: int, out: Path) -> list[dict]:
    records = []
    for r in range(rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in benches:
            for side in order:
                path = out / f"{name}-{side}-{r}.json"
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                run(trees[side], bench_args(name, path), path.with_suffix(".log"))
                wall_ms = (time.perf_counter() - t0) * 1e3
                results = medians(path) if BENCHES[name][1] else {"wall": (wall_ms, 1.0)}
                records.append({"round": r, "bench": name, "tree": side, "load1": load, "results": results})
                print(f"round {r} {name:<12} {side}: {wall_ms / 1e3:5.0f}s (load {load:.2f})", flush=True)
    return records


def ratio_table(records: list[dict]) -> list[dict]:
    """Per (bench, candidate): new/old ratio of the median per round, and both trees' speedups."""
    rows = []
    for name in dict.fromkeys(rec["bench"] for rec in records):
        by = {(rec["tree"], rec["round"]): rec["results"] for rec in records if rec["bench"] == name}
        rounds = sorted({r for _, r in by})
        for cand in by[("old", rounds[0])]:
            ratios = [by[("new", r)][cand][0] / by[("old", r)][cand][0] for r in rounds]
            rows.append(
                {
                    "bench": name,
                    "candidate": cand,
                    "old_ms": statistics.median(by[("old", r)][cand][0] for r in rounds),
                    "new_ms": statistics.median(by[("new", r)][cand][0] for r in rounds),
                    "ratio": statistics.median(ratios),
                    "ratio_q1": quantile(ratios, 0.25),
                    "ratio_q3": quantile(ratios, 0.75),
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                    "old_speedup": statistics.median(by[("old", r)][cand][1] for r in rounds),
                    "new_speedup": statistics.median(by[("new", r)][cand][1] for r in rounds),
                }
            )
    return rows


def train_losses(side: str, tree: Path, steps: int, out: Path) -> list[str]:
    """The default recipe trained `steps` steps (seed 1337): `train/loss` per step, as logged."""
    run_dir = out / f"fit-{side}"
    args = ["-m", "moelight", "fit", "recipes/quickstart.yaml", f"trainer.max_steps={steps}"]
    args += [
        "trainer.log_every_n_steps=1",
        f"trainer.val_check_interval={steps}",
        "trainer.progress_bar=false",
    ]
    run(tree, [*args, f"trainer.out_dir={run_dir}", "--overwrite"], out / f"fit-{side}.log")
    with (run_dir / "logs" / "version_0" / "metrics.csv").open() as f:
        return [row["train/loss"] for row in csv.DictReader(f) if row.get("train/loss")]


def markdown(rows: list[dict], fit: dict | None) -> str:
    lines = [
        "| benchmark | candidate | old ms | new ms | new/old median [q1, q3] | min-max | speedup old | speedup new |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['bench']} | {r['candidate']} | {r['old_ms']:.2f} | {r['new_ms']:.2f} | "
            f"{r['ratio']:.3f} [{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}] | {r['ratio_min']:.3f}-{r['ratio_max']:.3f} | "
            f"{r['old_speedup']:.2f}x | {r['new_speedup']:.2f}x |"
        )
    if fit:
        same = "bit-identical" if fit["identical"] else f"DIFFERENT (first at step {fit['first_difference']})"
        lines.append(
            f"\nTraining losses, {fit['steps']} steps of recipes/quickstart.yaml (seed 1337): {same}."
        )
    return "\n".join(lines) + "\n"


def compare_fit(trees: dict[str, Path], steps: int, out: Path) -> dict:
    losses = {side: train_losses(side, tree, steps, out) for side, tree in trees.items()}
    diff = [i for i, (a, b) in enumerate(zip(losses["old"], losses["new"])) if a != b]
    identical = not diff and len(losses["old"]) == len(losses["new"]) == steps
    return {
        "steps": steps,
        "identical": identical,
        "first_difference": diff[0] if diff else None,
        "losses": losses,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--benches", default="layer-tiny,layer-small,step,ep,bench-help", help=f"of {','.join(BENCHES)}"
    )
    parser.add_argument("--fit-steps", type=int, default=20, help="0: skip the training-loss check")
    parser.add_argument("--out", type=Path, default=Path("bench-results/compare"))
    args = parser.parse_args(argv)
    benches = args.benches.split(",")
    unknown = sorted(set(benches) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    for tree in trees.values():
        check_imports_from(tree)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    records = timed_rounds(trees, benches, args.rounds, args.out)
    fit = compare_fit(trees, args.fit_steps, args.out) if args.fit_steps else None
    rows = ratio_table(records)
    loads = [rec["load1"] for rec in records]
    meta = {"started": started, "trees": {k: str(v) for k, v in trees.items()}, "rounds": args.rounds}
    meta |= {"cpus": os.cpu_count(), "load1_min": min(loads), "load1_max": max(loads)}
    meta["commands"] = {name: " ".join(bench_args(name, Path("OUT.json"))) for name in benches}
    (args.out / "compare.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "fit": fit, "runs": records}, indent=1)
    )
    table = markdown(rows, fit)
    (args.out / "compare.md").write_text(table)
    print(
        f"\n{table}\nload average (1 min) {min(loads):.2f}-{max(loads):.2f}; wrote {args.out}/compare.{{json,md}}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
