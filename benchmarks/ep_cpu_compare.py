"""Per-expert vs group-local all2all, measured side by side in ONE CPU run with 2 gloo processes.

    python benchmarks/ep_cpu_compare.py [--recipe recipes/ep-cpu.yaml] [--steps 20] [--warmup 3]
                                        [--out bench-results/ep_cpu_compare.json] [key.path=value ...]

Four configurations of the same recipe and seed, trained on the same batches: routing `topk`
(the recipe's router) or `c2r` with `collaborators: placement` (top_t = experts per device - 1,
so every token's experts sit on one device), each dispatched by `grouplocal` with one row per
(token, expert) (`per_expert`, what MegaBlocks and most EP systems send) or one row per
(token, device) (`per_device`, the group-local all2all). Per configuration: rows, remote rows,
all2all bytes (both directions) and distinct devices per token and MoE layer, summed over both
ranks, and the full training-step time (forward, backward, gradient sync, clipping, AdamW),
timed round-robin across configurations (order rotated each round) after a warm-up, the slower
rank's time per round. Prints a table and writes JSON. On loopback gloo bytes are nearly free;
`moelight bench ep` runs the same comparison over an emulated interconnect.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moelight.bench.ep import Candidate, batches_for_rank, free_port, per_token, slowest_rank, time_steps
from moelight.bench.timing import paired_speedups, summarize
from moelight.parallel.groups import build_groups
from moelight.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]


def configurations(recipe: Recipe) -> dict[str, list[str]]:
    per_device = recipe.model.num_experts // recipe.parallel.expert_parallel
    c2r = ["router.name=c2r", "router.collaborators=placement", f"router.top_t={per_device - 1}"]
    return {
        "topk / per_expert": ["dispatcher.rows=per_expert"],
        "topk / grouplocal": ["dispatcher.rows=per_device"],
        "c2r / per_expert": c2r + ["dispatcher.rows=per_expert"],
        "c2r / grouplocal": c2r + ["dispatcher.rows=per_device"],
    }


def worker(rank: int, port: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    base = load_recipe(args.recipe, args.overrides)
    world = base.parallel.expert_parallel
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    groups = build_groups(world, "cpu")
    batches = batches_for_rank(base, world, rank, args.warmup + args.steps)
    candidates = {
        name: Candidate(load_recipe(args.recipe, args.overrides + extra), groups, groups.ep, batches)
        for name, extra in configurations(base).items()
    }
    for c in candidates.values():  # warm-up, then count only the timed steps
        c.warm_up(args.warmup)
    times = time_steps({name: c.step for name, c in candidates.items()}, args.steps)
    results = {
        name: {"counters": c.counters_all_ranks(), "step_ms": slowest_rank(times[name])}
        for name, c in candidates.items()
    }
    if rank == 0:
        report(base, args, results)
    dist.destroy_process_group()


def report(recipe: Recipe, args: argparse.Namespace, results: dict) -> None:
    rows = []
    for name, r in results.items():
        ms = r["step_ms"]
        baseline = results[name.split(" / ")[0] + " / per_expert"]["step_ms"]
        speedups = sorted(paired_speedups(baseline, ms))
        rows.append(
            {
                "config": name,
                **per_token(r["counters"]),
                "step": summarize(ms).as_dict(),
                "speedup_vs_per_expert_median": speedups[len(speedups) // 2],
            }
        )
    header = f"{'config':<20}{'rows/tok':>9}{'remote/tok':>11}{'bytes/tok':>11}{'dev/tok':>9}{'step ms':>10}{'IQR':>8}{'vs per_expert':>15}"
    print(header)
    print("-" * len(header))
    for r in rows:
        s = r["step"]
        print(
            f"{r['config']:<20}{r['rows_per_token']:>9.3f}{r['remote_rows_per_token']:>11.3f}"
            f"{r['bytes_per_token']:>11.1f}{r['devices_per_token']:>9.3f}{s['median_ms']:>10.1f}"
            f"{s['iqr_ms']:>8.1f}{r['speedup_vs_per_expert_median']:>14.3f}x"
        )
    m = recipe.model
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} thread(s)/rank",
        "torch": torch.__version__,
        "recipe": str(args.recipe),
        "overrides": args.overrides,
        "world": recipe.parallel.expert_parallel,
        "model": {"hidden": m.hidden_size, "experts": m.num_experts, "top_k": m.top_k, "layers": m.n_layers},
        "tokens_per_rank_per_step": recipe.data.batch_size * recipe.data.seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "per_token": "per MoE layer; bytes count rows x hidden x element size, there and back, that left the device",
    }
    print(
        f"\n{meta['machine']}; {meta['world']} gloo processes; {meta['tokens_per_rank_per_step']} tokens/rank/step; "
        f"{args.steps} timed steps per config after {args.warmup} warm-up"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    print(f"wrote {out}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "ep-cpu.yaml"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--out", default="bench-results/ep_cpu_compare.json")
    args, overrides = parser.parse_known_args(argv)
    args.overrides = ["dispatcher.name=grouplocal", *overrides]
    world = load_recipe(args.recipe, args.overrides).parallel.expert_parallel
    start = time.perf_counter()
    mp.spawn(worker, args=(free_port(), args), nprocs=world)
    print(f"({time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main(sys.argv[1:])
