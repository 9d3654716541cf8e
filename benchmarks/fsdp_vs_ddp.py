"""The step-time cost of the FSDP path against the DDP path, side by side in ONE CPU run (gloo).

    python benchmarks/fsdp_vs_ddp.py [--recipe recipes/ep-cpu.yaml] [--steps 20] [--warmup 3]
        [--out bench-results/fsdp_vs_ddp.json] [key.path=value ...]

Two configurations of the same recipe, seed and batches on the recipe's P ranks:
- `ddp`: dense parameters replicated, gradients all-reduced by DDP, expert gradients reduced over
  their replicas (the `expert_parallel` strategy's step);
- `fsdp`: dense parameters FSDP2-sharded over all ranks, experts over their replicas (the
  `fsdp_expert_parallel` strategy's plan, moelight/parallel/fsdp_plan.py): every step gathers
  parameters before use and reduce-scatters gradients.
Each step is forward, loss, backward, gradient reduction, global-norm clipping and AdamW; timed
round-robin (order rotated each round) after a warm-up, the slower rank's time per round; the
ratio is the median of the per-round fsdp/ddp time ratios (> 1: FSDP costs more).
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
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh

from moelight.bench.ep import Candidate, batches_for_rank, free_port, slowest_rank, time_steps
from moelight.bench.timing import paired_speedups, summarize
from moelight.model.build import build_model
from moelight.parallel.fsdp_plan import shard_model
from moelight.parallel.grad_norm import clip_sharded_grads
from moelight.parallel.groups import build_groups
from moelight.recipe import Recipe, load_recipe
from moelight.training.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]


class FSDPCandidate:
    """The FSDP path's step on this rank (what fsdp_expert_parallel runs inside Lightning)."""

    def __init__(self, recipe: Recipe, groups, batches: list):
        torch.manual_seed(recipe.seed)  # the same initial model as the DDP candidate
        self.model = build_model(recipe, groups.ep)
        world_mesh = init_device_mesh("cpu", (groups.world_size,), mesh_dim_names=("dp",))
        shard_model(self.model, world_mesh, groups.mesh["edp"])
        self.optimizer = build_optimizer(self.model, recipe.optim, recipe.trainer.max_steps)["optimizer"]
        self.grad_clip = recipe.optim.grad_clip
        self.batches, self.i = batches, 0

    def step(self) -> None:
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        logits = self.model(x)
        loss = (
            F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1)) + self.model.aux_loss()
        )
        loss.backward()
        if self.grad_clip:
            clip_sharded_grads([p for p in self.model.parameters()], self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def warm_up(self, steps: int) -> None:
        self.i = 0
        for _ in range(steps):
            self.step()


def worker(rank: int, port: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.overrides)
    world = recipe.trainer.devices
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    groups = build_groups(recipe.parallel.expert_parallel, "cpu")
    batches = batches_for_rank(recipe, world, rank, args.warmup + args.steps)
    candidates = {
        "ddp": Candidate(recipe, groups, groups.ep, batches),
        "fsdp": FSDPCandidate(recipe, groups, batches),
    }
    for c in candidates.values():
        c.warm_up(args.warmup)
    times = time_steps({name: c.step for name, c in candidates.items()}, args.steps)
    results = {name: slowest_rank(times[name]) for name in candidates}
    if rank == 0:
        report(recipe, args, results)
    dist.destroy_process_group()


def report(recipe: Recipe, args: argparse.Namespace, results: dict[str, list[float]]) -> None:
    ratios = sorted(paired_speedups(results["fsdp"], results["ddp"]))  # fsdp time / ddp time per round
    median_ratio = ratios[len(ratios) // 2]
    print(f"{'config':<8}{'step ms (median)':>18}{'IQR ms':>9}")
    for name, ms in results.items():
        s = summarize(ms)
        print(f"{name:<8}{s.median_ms:>18.1f}{s.iqr_ms:>9.1f}")
    print(
        f"fsdp / ddp step time (median of paired ratios): {median_ratio:.3f} (q1 {ratios[len(ratios) // 4]:.3f}, q3 {ratios[3 * len(ratios) // 4]:.3f})"
    )
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    m = recipe.model
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} thread(s)/rank",
        "loadavg_at_end": load,
        "torch": torch.__version__,
        "recipe": str(args.recipe),
        "overrides": args.overrides,
        "world": recipe.trainer.devices,
        "expert_parallel": recipe.parallel.expert_parallel,
        "model": {"hidden": m.hidden_size, "experts": m.num_experts, "top_k": m.top_k, "layers": m.n_layers},
        "tokens_per_rank_per_step": recipe.data.batch_size * recipe.data.seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    print(f"load average at the end: {' '.join(load)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {name: summarize(ms).as_dict() for name, ms in results.items()}
    out.write_text(
        json.dumps({"meta": meta, "step": summary, "fsdp_over_ddp_median": median_ratio}, indent=1)
    )
    print(f"wrote {out}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "ep-cpu.yaml"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--out", default="bench-results/fsdp_vs_ddp.json")
    args, overrides = parser.parse_known_args(argv)
    args.overrides = overrides
    world = load_recipe(args.recipe, args.overrides).trainer.devices
    start = time.perf_counter()
    mp.spawn(worker, args=(free_port(), args), nprocs=world)
    print(f"({time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main(sys.argv[1:])
