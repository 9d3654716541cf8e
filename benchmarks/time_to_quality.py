"""Time to quality: which router reaches a given validation loss soonest on an emulated link?

    python benchmarks/time_to_quality.py                          # train, measure, report
    python benchmarks/time_to_quality.py --reuse --measure-steps  # re-measure step times only

(a) the top-k base of benchmarks/frontier.py (recipes/frontier.yaml: 16 experts, top-2; 600 steps)
    and its profile (collaborator lists, collaboration-aware placements on 2 and 4 devices);
(b) continues it for --steps per arm and data-order seed (all arms of a seed see the same
    batches), recording the validation loss on the first --eval-batches validation batches every
    --eval-every steps (the curve), then profiles the final model (val loss on --val-tokens,
    devices per token on 4 devices). Arms: top-k; C2R placement P=4; soft C2R placement P=4 (one
    run per --penalties value); online C2R (lists re-derived every --refresh-every steps, no
    profile); per-layer T (each layer's T chosen for --budget devices per token under the base
    placement on 4 devices). Training is single-process (losses do not depend on machine load);
(c) with --measure-steps, measures each arm's training step under the emulated InfiniBand link at
    P = 4 with `moelight bench ep`'s machinery (the arm's first-seed checkpoint loaded, so the
    routing is the trained one; its router, dispatcher and placement), --bench-repeats times,
    and (unless --no-ep-tables) the `moelight bench ep recipes/ep-bench.yaml` tables of
    docs/benchmarks.md with ranges and limit rows;
(d) reports per arm, seed and target the emulated time to reach the target (top-k's final loss on
    the curve of the same seed, and looser targets --target-offsets nats above it), "not reached"
    where the curve never gets there; writes the time-to-quality section of docs/frontier.md and
    docs/time-to-quality.png (val loss against emulated wall time, one curve per arm).

Every stage writes into its own directory under --out and is skipped with --reuse when done, so
an interrupted run is resumed by running the same command with --reuse (a run stopped mid-way
restarts from its beginning). Step times measured on a loaded machine are marked as such.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from stages import fit_run, profile_run, slug  # beside this script

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "frontier.yaml"
TOPK = "top-k"
P = 4  # devices of the emulated expert-parallel run


@dataclass
class Arm:
    name: str
    router: dict[str, Any]  # the router section's overrides (single-process training)
    placement: str  # "base": the base model's placement on P devices; "own": the arm's final one
    lists: str = "base"  # profile.path while training: "base" profile or "placement" lists
    timing: dict[str, list[str]] = field(default_factory=dict)  # label -> bench ep overrides


def _value(v: Any) -> str:
    return "[" + ", ".join(str(x) for x in v) + "]" if isinstance(v, list) else str(v)


def router_overrides(router: dict[str, Any]) -> list[str]:
    return [f"router.{k}={_value(v)}" for k, v in router.items()]


def make_arms(args, num_experts: int, layer_top_t: list[int]) -> list[Arm]:
    t_dev = num_experts // P - 1  # the other experts on the top-1 expert's device
    blocking = ["dispatcher.rows=per_device", "dispatcher.overlap=false"]
    placement_router = {"name": "c2r", "top_t": t_dev}
    out = [
        Arm(
            TOPK,
            {"name": "topk"},
            "own",
            timing={
                "top-k / per-expert": ["dispatcher.rows=per_expert", "dispatcher.overlap=false"],
                "top-k / grouplocal": blocking,
            },
        ),
        Arm(
            f"C2R placement P={P}",
            placement_router,
            "base",
            "placement",
            timing={
                f"C2R placement P={P} / grouplocal": blocking,
                f"C2R placement P={P} / grouplocal+overlap": ["dispatcher.rows=per_device"],
            },
        ),
    ]
    for pen in args.penalties:
        name = f"soft C2R placement P={P} (penalty {pen:g})"
        out.append(
            Arm(
                name,
                {**placement_router, "penalty": pen},
                "base",
                "placement",
                {f"{name} / grouplocal": blocking},
            )
        )
    online = {
        "name": "c2r",
        "collaborators": "online",
        "top_t": args.online_top_t,
        "refresh_every": args.refresh_every,
    }
    name = f"online C2R T={args.online_top_t}"
    out.append(Arm(name, online, "own", timing={f"{name} / grouplocal": blocking}))
    per_layer = {"name": "c2r", "top_t": max(layer_top_t), "layer_top_t": layer_top_t}
    name = f"per-layer T (budget {args.budget:g})"
    out.append(Arm(name, per_layer, "base", timing={f"{name} / grouplocal": blocking}))
    if args.only:
        keep = set(args.only)
        out = [a for a in out if a.name in keep or a.name == TOPK]
    return out


def bench_router_overrides(arm: Arm) -> list[str]:
    """The arm's router under expert parallelism: placement lists become `collaborators: placement`
    (the same routing: tests/test_placement_collaborators.py)."""
    router = dict(arm.router)
    if arm.lists == "placement":
        router["collaborators"] = "placement"
    return router_overrides(router)


# --- (b) training -----------------------------------------------------------------------------


def read_curve(run_dir: Path, every: int) -> tuple[list[int], list[float]]:
    """(steps, val losses) from the run's CSV log (the last value logged at each step). Lightning
    logs the validation after step n*every at step n*every - 1: the curve uses n*every."""
    rows: dict[int, float] = {}
    for path in sorted(run_dir.rglob("metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get("val/loss"):
                    rows[-(-(int(row["step"]) + 1) // every) * every] = float(row["val/loss"])
    steps = sorted(rows)
    return steps, [rows[s] for s in steps]


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Continue one (arm, seed), read its curve and profile its final model (a worker process)."""
    import torch

    from moelight.c2r.placement import load_placement

    torch.set_num_threads(job["threads"])
    run_dir = Path(job["run_dir"])
    done = run_dir / "result.json"
    if job["reuse"] and done.is_file():
        return json.loads(done.read_text())
    if run_dir.exists():  # a run stopped mid-way restarts from its beginning
        shutil.rmtree(run_dir)
    ckpt, seconds = fit_run(RECIPE, job["overrides"], run_dir, False)
    steps, losses = read_curve(run_dir, job["eval_every"])
    meta = profile_run(ckpt, run_dir / "profile", False, job["val_tokens"])
    layers, e = meta["num_layers"], meta["num_experts"]
    if job["placement"] == "base":
        placement = load_placement(job["base_placement"], layers, e, P)
        dev = _devices_per_token(run_dir / "profile", placement)
    else:
        dev = meta["placements"][str(P)]["devices_per_token"]
    out = {
        "checkpoint": str(ckpt),
        "steps": steps,
        "val_losses": losses,
        "val_loss": meta["loss"],
        "load_cv": meta["summary"]["load_cv"],
        "devices_per_token": dev,
        "train_seconds": seconds,
    }
    done.write_text(json.dumps(out, indent=1) + "\n")
    return out


def _devices_per_token(profile_dir: Path, placement) -> float:
    from moelight.c2r.partition import expected_devices_per_token
    from moelight.c2r.profile_file import histogram_from_tensors, read_profile

    tensors, _ = read_profile(profile_dir)
    sets, counts = histogram_from_tensors(tensors)
    return float(expected_devices_per_token(sets, counts, placement).mean())


def base_stage(args, out: Path) -> tuple[Path, Path, dict[str, Any]]:
    quiet = ["trainer.progress_bar=false", "trainer.logger=csv", "trainer.limit_val_batches=1"]
    steps = [
        f"trainer.max_steps={args.base_steps}",
        f"trainer.val_check_interval={args.base_steps}",
        f"trainer.checkpoint_every_n_steps={args.base_steps}",
    ]
    ckpt, _ = fit_run(RECIPE, [*steps, *quiet], out / "base", args.reuse)
    prof = out / "base" / "profile"
    meta = profile_run(ckpt, prof, args.reuse, None)
    return ckpt, prof, meta


def placement_lists(base_profile: Path, layers: int, e: int) -> Path:
    """Collaborator lists that follow the base placement on P devices (.npy), as frontier.py."""
    import numpy as np

    from moelight.c2r.placement import load_placement
    from moelight.c2r.placement_collaborators import placement_collaborator_lists
    from moelight.c2r.profile_file import read_profile

    tensors, _ = read_profile(base_profile)
    placement = load_placement(str(base_profile / f"placement-{P}.json"), layers, e, P)
    path = base_profile.parent / f"placement-collaborators-{P}.npy"
    np.save(path, placement_collaborator_lists(placement, tensors["coactivation"]).numpy().astype(np.int64))
    return path


def per_layer_top_t(base_profile: Path, layers: int, e: int, top_k: int, budget: float) -> list[int]:
    import torch

    from moelight.c2r.per_layer_t import choose_layer_top_t
    from moelight.c2r.placement import load_placement
    from moelight.c2r.profile_file import read_profile

    tensors, _ = read_profile(base_profile)
    placement = load_placement(str(base_profile / f"placement-{P}.json"), layers, e, P)
    return choose_layer_top_t(
        torch.as_tensor(tensors["coactivation"]), torch.as_tensor(placement), top_k, budget
    )


def train_stage(args, out: Path, arms: list[Arm], base_ckpt: Path, base_profile: Path, lists_npy: Path):
    quiet = ["trainer.progress_bar=false", "trainer.logger=csv"]
    jobs = []
    # seed-major: every arm of the first seed finishes first, so a run cut short has whole seeds
    for seed in args.seeds:
        for arm in arms:
            overrides = [
                f"model.init_from={base_ckpt}",
                f"profile.path={lists_npy if arm.lists == 'placement' else base_profile}",
                f"optim.lr={args.lr}",
                "optim.warmup_steps=10",
                f"trainer.max_steps={args.steps}",
                f"trainer.val_check_interval={args.eval_every}",
                f"trainer.limit_val_batches={args.eval_batches}",
                f"trainer.checkpoint_every_n_steps={args.steps}",
                f"seed={seed}",
                *quiet,
                *router_overrides(arm.router),
            ]
            job = {
                "overrides": overrides,
                "run_dir": str(out / f"{slug(arm.name)}_seed{seed}"),
                "reuse": args.reuse,
                "val_tokens": args.val_tokens or None,
                "threads": args.threads,
                "eval_every": args.eval_every,
                "placement": arm.placement,
                "base_placement": str(base_profile / f"placement-{P}.json"),
            }
            jobs.append((arm.name, seed, job))
    print(f"== (b) {len(jobs)} continued runs of {args.steps} steps, {args.workers} at a time", flush=True)
    results: dict[str, dict[int, dict[str, Any]]] = {a.name: {} for a in arms}
    t0 = time.perf_counter()
    for name, seed, job in list(jobs):  # finished runs are read here, without a worker
        done = Path(job["run_dir"]) / "result.json"
        if args.reuse and done.is_file():
            results[name][seed] = json.loads(done.read_text())
            jobs.remove((name, seed, job))
    if not jobs:
        return results
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_job, job): (name, seed) for name, seed, job in jobs}
        for n, (future, (name, seed)) in enumerate(futures.items(), 1):
            r = results[name][seed] = future.result()
            print(
                f"   [{n}/{len(jobs)}] {name} seed {seed}: val {r['val_loss']:.4f}, "
                f"dev/token {r['devices_per_token']:.3f}, {(time.perf_counter() - t0) / 60:.1f} min",
                flush=True,
            )
    return results


# --- (c) step times ---------------------------------------------------------------------------


def measure_stage(args, out: Path, arms: list[Arm], results, base_profile: Path) -> dict[str, Any]:
    """bench ep at P on the InfiniBand preset: one configuration per (arm, dispatch variant)."""
    from moelight.bench import ep

    first = args.seeds[0]
    configs: dict[str, list[str]] = {}
    arm_of: dict[str, str] = {}
    for arm in arms:
        run = results[arm.name][first]
        run_dir = Path(run["checkpoint"]).parents[1]
        placement = (
            base_profile / f"placement-{P}.json"
            if arm.placement == "base"
            else run_dir / "profile" / f"placement-{P}.json"
        )
        common = [
            f"model.init_from={run['checkpoint']}",
            f"profile.path={base_profile}",
            f"parallel.placement={placement}",
            *bench_router_overrides(arm),
        ]
        for label, extra in arm.timing.items():
            configs[label] = [*common, *extra]
            arm_of[label] = arm.name
    args_ep = ep.Args(
        recipe=str(RECIPE),
        overrides=[
            "dispatcher.name=grouplocal",
            f"parallel.expert_parallel={P}",
            f"trainer.devices={P}",
            f"data.batch_size={args.bench_batch}",
        ],
        procs=P,
        steps=args.bench_steps,
        warmup=args.bench_warmup,
        threads=1,
        links=[args.link],
        custom=None,
        config_overrides=configs,
        match_reference_ratio=True,
    )
    result = ep.run_repeated(args_ep, args.bench_repeats)
    result["arm_of"] = arm_of
    (out / "step_times.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def ep_tables_stage(args, out: Path) -> dict[str, Any]:
    """The docs/benchmarks.md `bench ep` tables: ep-bench.yaml at P = 4, InfiniBand, with ranges."""
    from moelight.bench import ep

    args_ep = ep.Args(
        recipe=str(ROOT / "recipes" / "ep-bench.yaml"),
        overrides=["dispatcher.name=grouplocal", f"parallel.expert_parallel={P}"],  # as the CLI does
        procs=P,
        steps=args.bench_steps,
        warmup=args.bench_warmup,
        threads=1,
        links=[args.link],
        custom=None,
    )
    result = ep.run_repeated(args_ep, args.bench_repeats)
    (out / "ep_bench.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


# --- main -------------------------------------------------------------------------------------


def comma(kind):
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/ttq", help="run directory (checkpoints, curves, JSON)")
    ap.add_argument("--base-steps", type=int, default=600, help="top-k steps of the base model")
    ap.add_argument("--steps", type=int, default=600, help="continued-training steps of every arm")
    ap.add_argument("--eval-every", type=int, default=50, help="steps between validation-loss points")
    ap.add_argument("--eval-batches", type=int, default=16, help="validation batches per curve point")
    ap.add_argument("--seeds", type=comma(int), default=[2024, 2025, 2026], help="data-order seeds")
    ap.add_argument("--penalties", type=comma(float), default=[0.3, 1.0], help="soft C2R penalties (logits)")
    ap.add_argument("--online-top-t", type=int, default=2, help="online C2R's T")
    ap.add_argument("--refresh-every", type=int, default=50, help="online C2R's steps between list refreshes")
    ap.add_argument("--budget", type=float, default=1.25, help="per-layer T: devices-per-token budget at P=4")
    ap.add_argument("--target-offsets", type=comma(float), default=[0.0, 0.01, 0.03],
                    help="targets: top-k's final curve loss of the seed plus these nats")  # fmt: skip
    ap.add_argument("--lr", type=float, default=1e-3, help="continued-training peak learning rate")
    ap.add_argument("--val-tokens", type=int, default=196_608, help="validation tokens of the final profile")
    ap.add_argument("--workers", type=int, default=2, help="parallel training processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    ap.add_argument("--only", type=comma(str), default=[], help="arm names to run (top-k always)")
    ap.add_argument("--measure-steps", action="store_true", help="measure step times (bench ep, P=4)")
    ap.add_argument("--link", default="infiniband", help="bench ep link preset")
    ap.add_argument("--bench-steps", type=int, default=5, help="timed steps per configuration")
    ap.add_argument("--bench-warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--bench-repeats", type=int, default=3, help="whole bench ep measurements")
    ap.add_argument("--bench-batch", type=int, default=4, help="sequences per rank per timed step")
    ap.add_argument("--no-ep-tables", action="store_true", help="skip the ep-bench.yaml tables")
    ap.add_argument("--docs", default=str(ROOT / "docs"), help="where the page and figure go")
    ap.add_argument("--reuse", action="store_true", help="skip stages whose outputs exist")
    ap.add_argument("--no-report", action="store_true", help="measure only; leave docs/ alone")
    args = ap.parse_args(argv)
    for name in (
        "steps",
        "eval_every",
        "eval_batches",
        "bench_steps",
        "bench_repeats",
        "bench_batch",
        "workers",
    ):
        if getattr(args, name) < 1:
            ap.exit(2, f"error: --{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})\n")
    if args.steps % args.eval_every:
        ap.exit(2, f"error: --steps {args.steps} must be a multiple of --eval-every {args.eval_every}\n")
    if args.budget < 1:
        ap.exit(2, f"error: --budget {args.budget} must be >= 1 device per token\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.measure_steps:
        from moelight.bench import netns

        if not netns.in_namespace():  # the emulated link needs a private network namespace
            netns.require()
            return netns.run_command_in_namespace(
                [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
            )
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    print("== (a) top-k base and its profile", flush=True)
    base_ckpt, base_profile, meta = base_stage(args, out)
    layers, e = meta["num_layers"], meta["num_experts"]
    lists_npy = placement_lists(base_profile, layers, e)
    layer_t = per_layer_top_t(base_profile, layers, e, 2, args.budget)
    arms = make_arms(args, e, layer_t)
    results = train_stage(args, out, arms, base_ckpt, base_profile, lists_npy)
    steps_file, ep_file = out / "step_times.json", out / "ep_bench.json"
    if args.measure_steps:
        print(f"== (c) step times: bench ep, P={P}, {args.link}, {args.bench_repeats} repeats", flush=True)
        measure_stage(args, out, arms, results, base_profile)
        if not args.no_ep_tables:
            ep_tables_stage(args, out)
    step_times = json.loads(steps_file.read_text()) if steps_file.is_file() else None
    ep_tables = json.loads(ep_file.read_text()) if ep_file.is_file() else None
    if ep_tables and "repeated" in ep_tables:  # written by `moelight bench ep --json`
        ep_tables = ep_tables["repeated"]
    from time_to_quality_report import summarise, write_reports  # beside this script

    record = {
        "command": "python benchmarks/time_to_quality.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "steps": args.steps,
        "eval_every": args.eval_every,
        "eval_batches": args.eval_batches,
        "seeds": args.seeds,
        "target_offsets": args.target_offsets,
        "budget": args.budget,
        "layer_top_t": layer_t,
        "arms": {
            a.name: {"router": a.router, "placement": a.placement, "timing": list(a.timing)} for a in arms
        },
        "runs": {name: {str(s): r for s, r in per.items()} for name, per in results.items()},
        "wall_s": time.perf_counter() - t0,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    record["summary"] = summarise(record, step_times)
    (out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    if not args.no_report:
        for path in write_reports(record, step_times, ep_tables, Path(args.docs)):
            print(f"report: {path}")
    print(f"results: {out / 'results.json'}; {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
