"""The quality-communication frontier of moelight's routers, measured on one base model.

    python benchmarks/frontier.py          # ~25 min on 2 shared CPU cores (docs/frontier.md)

(a) trains a top-k base model (recipes/frontier.yaml: 16 experts, top-2) for --base-steps;
(b) profiles it (`moelight profile --devices 2,4`: co-activation, collaborator lists, and the
    collaboration-aware placements on 2 and 4 devices);
(c) continues training from that checkpoint for --steps, once per arm and data-order seed, all
    arms of one seed seeing the same batches: top-k; C2R with the base profile (T = 1, 2, 3);
    C2R with placement collaborators (the other experts on the top-1 expert's device under the
    base placement, P = 2 and 4); load-aware C2R (the same, plus the aux-loss-free expert bias);
    device-limited routing (M = 1, 2 of 4 devices; M = 1 of 2), its groups the contiguous
    device blocks. Runs are single-process: placement-constrained C2R routes with lists from
    `moelight.c2r.placement_collaborators` (identical routing, tested), device-limited with
    `groups: blocks` (identical to the contiguous placement's devices);
(d) profiles every continued model on the whole validation split: val loss (mean next-token
    loss), load CV, and the expected distinct devices per token, exact over the profiled
    routings, under each placement; writes docs/frontier.md's table and docs/frontier-p*.png.

Devices per token of an arm at P: under the placement it was trained with when its routing
depends on one (C2R placement: the base placement; device-limited: contiguous blocks), else
under the collaboration-aware placement computed from its own final profile.
Step time under an emulated interconnect is not measured here (`moelight bench ep`'s presets
are another branch's work).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from stages import fit_run, profile_run, slug  # beside this script

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "frontier.yaml"
TOPK = "top-k"
BIAS_RATE = 1e-3  # load-aware arms: expert-bias step (DeepSeek-V3's gamma)


@dataclass
class Arm:
    name: str
    family: str  # top-k | C2R | C2R placement | load-aware C2R | device-limited
    router: dict[str, Any]
    devices: int | None = None  # P the routing is bound to (None: any placement)
    placement: str = "own"  # own | base | contiguous: where its devices per token are counted
    overrides: list[str] = field(default_factory=list)


def arms(num_experts: int, top_ts: list[int], bias_rates: list[float]) -> list[Arm]:
    out = [Arm(TOPK, "top-k", {"name": "topk"})]
    out += [Arm(f"C2R T={t}", "C2R", {"name": "c2r", "top_t": t}) for t in top_ts]
    for rate in bias_rates:
        suffix = "" if rate == BIAS_RATE else f" (bias step {rate:g})"
        router = {"name": "c2r", "top_t": 1, "bias_update_rate": rate}
        out.append(Arm(f"load-aware C2R T=1{suffix}", "load-aware C2R", router))
    for p in (2, 4):
        t = num_experts // p - 1
        out.append(Arm(f"C2R placement P={p}", "C2R placement", {"name": "c2r", "top_t": t}, p, "base"))
    out.append(
        Arm(
            "load-aware C2R placement P=4",
            "load-aware C2R",
            {"name": "c2r", "top_t": num_experts // 4 - 1, "bias_update_rate": BIAS_RATE},
            4,
            "base",
        )
    )
    for p, m in ((4, 1), (4, 2), (2, 1)):
        router = {"name": "device_limited", "groups": "blocks", "num_groups": p, "max_groups": m}
        out.append(Arm(f"device-limited M={m}/P={p}", "device-limited", router, p, "contiguous"))
    return out


def _router_overrides(router: dict[str, Any]) -> list[str]:
    # Merged into the recipe's router section ({name: topk, aux_loss_coef: 0.01}).
    return [f"router.{k}={v}" for k, v in router.items()]


def _devices_per_token(profile_dir: Path, placement) -> float:
    from moelight.c2r.partition import expected_devices_per_token
    from moelight.c2r.profile_file import histogram_from_tensors, read_profile

    tensors, _ = read_profile(profile_dir)
    sets, counts = histogram_from_tensors(tensors)
    return float(expected_devices_per_token(sets, counts, placement).mean())


def _base_placements(base_profile: Path, num_layers: int, num_experts: int) -> dict[int, Any]:
    from moelight.c2r.placement import load_placement

    return {
        p: load_placement(str(base_profile / f"placement-{p}.json"), num_layers, num_experts, p)
        for p in (2, 4)
    }


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Continue training one (arm, seed) and measure it; runs in a worker process."""
    import torch

    from moelight.c2r.placement import contiguous_placement

    torch.set_num_threads(job["threads"])
    run_dir = Path(job["run_dir"])
    ckpt, seconds = fit_run(RECIPE, job["overrides"], run_dir, job["reuse"])
    prof_dir = run_dir / "profile"
    meta = profile_run(ckpt, prof_dir, job["reuse"], job["val_tokens"])
    layers, e = meta["num_layers"], meta["num_experts"]
    base = _base_placements(Path(job["base_profile"]), layers, e)
    out = {
        "val_loss": meta["loss"],
        "load_cv": meta["summary"]["load_cv"],
        "seconds": seconds,
    }
    for p in (2, 4):
        out[f"dev_p{p}_contiguous"] = _devices_per_token(prof_dir, contiguous_placement(layers, e, p))
        out[f"dev_p{p}_base"] = _devices_per_token(prof_dir, base[p])
        out[f"dev_p{p}_own"] = meta["placements"][str(p)]["devices_per_token"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/frontier", help="run directory (checkpoints, profiles, JSON)")
    ap.add_argument("--base-steps", type=int, default=600, help="top-k steps before profiling")
    ap.add_argument("--steps", type=int, default=150, help="continued-training steps of every arm")
    ap.add_argument("--seeds", default="2024,2025,2026", help="data-order seeds (comma list)")
    ap.add_argument("--top-t", default="1,2,3", help="C2R (profile) top_t values (comma list)")
    ap.add_argument(
        "--bias-rates",
        default="1e-3,1e-4",
        help="expert-bias steps of the load-aware C2R T=1 arms (comma list)",
    )
    ap.add_argument("--lr", type=float, default=1e-3, help="continued-training peak learning rate")
    ap.add_argument(
        "--val-tokens",
        type=int,
        default=196_608,
        help="validation tokens each continued model is measured on (0: the whole split)",
    )
    ap.add_argument("--workers", type=int, default=2, help="parallel training processes")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (1: on shared cores, more threads wait on each other)",
    )
    ap.add_argument("--only", default="", help="comma list of arm names to run (default: all)")
    ap.add_argument("--docs", default=str(ROOT / "docs"), help="where frontier.md and the plots go")
    ap.add_argument("--reuse", action="store_true", help="skip stages whose outputs exist")
    ap.add_argument("--no-report", action="store_true", help="measure only; leave docs/ alone")
    args = ap.parse_args(argv)

    out, docs = Path(args.out).resolve(), Path(args.docs).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    quiet = ["trainer.progress_bar=false", "trainer.logger=csv", "trainer.limit_val_batches=1"]
    t_start = time.perf_counter()

    print(f"== (a) top-k base: {args.base_steps} steps")
    steps = [
        f"trainer.max_steps={args.base_steps}",
        f"trainer.val_check_interval={args.base_steps}",
        f"trainer.checkpoint_every_n_steps={args.base_steps}",
    ]
    base_ckpt, base_s = fit_run(RECIPE, [*steps, *quiet], out / "base", args.reuse)
    print("== (b) profile the base model")
    base_profile = out / "base" / "profile"
    # The base's collaborator lists and placements come from the whole validation split; its row in
    # the table is measured on the same tokens as every arm.
    base_meta = profile_run(base_ckpt, base_profile, args.reuse, None)
    base_eval = profile_run(base_ckpt, out / "base" / "profile-eval", args.reuse, args.val_tokens)
    layers, e = base_meta["num_layers"], base_meta["num_experts"]
    placement_lists = _write_placement_lists(base_profile, layers, e)

    all_arms = arms(
        e, [int(t) for t in args.top_t.split(",")], [float(r) for r in args.bias_rates.split(",")]
    )
    if args.only:
        keep = set(args.only.split(","))
        all_arms = [a for a in all_arms if a.name in keep or a.name == TOPK]
    jobs = []
    for arm in all_arms:
        # C2R bound to a placement routes with lists that follow the base placement.
        profile_path = placement_lists[arm.devices] if arm.placement == "base" else base_profile
        for seed in seeds:
            overrides = [
                f"model.init_from={base_ckpt}",
                f"profile.path={profile_path}",
                f"optim.lr={args.lr}",
                "optim.warmup_steps=10",
                f"trainer.max_steps={args.steps}",
                f"trainer.val_check_interval={args.steps}",
                f"trainer.checkpoint_every_n_steps={args.steps}",
                f"seed={seed}",
                *quiet,
                *_router_overrides(arm.router),
            ]
            run_dir = out / f"{slug(arm.name)}_seed{seed}"
            jobs.append(
                (
                    arm.name,
                    seed,
                    {
                        "overrides": overrides,
                        "run_dir": str(run_dir),
                        "base_profile": str(base_profile),
                        "reuse": args.reuse,
                        "val_tokens": args.val_tokens or None,
                        "threads": args.threads,
                    },
                )
            )
    print(f"== (c, d) {len(jobs)} continued runs of {args.steps} steps, {args.workers} at a time")
    results: dict[str, dict[int, dict[str, Any]]] = {a.name: {} for a in all_arms}
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_job, job): (name, seed) for name, seed, job in jobs}
        for n, (future, (name, seed)) in enumerate(futures.items(), 1):
            results[name][seed] = future.result()
            r = results[name][seed]
            print(
                f"   [{n}/{len(jobs)}] {name} seed {seed}: val {r['val_loss']:.4f}, load CV {r['load_cv']:.3f}, "
                f"{(time.perf_counter() - t_start) / 60:.1f} min"
            )
    summary = summarise(all_arms, results, seeds)
    wall = time.perf_counter() - t_start
    record = {
        "command": "python benchmarks/frontier.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "recipe": str(RECIPE.relative_to(ROOT)),
        "base_steps": args.base_steps,
        "steps": args.steps,
        "lr": args.lr,
        "seeds": seeds,
        "validation_split_tokens": base_meta["tokens"],
        "validation_tokens": base_eval["tokens"],
        "base": {
            "val_loss": base_eval["loss"],
            "load_cv": base_eval["summary"]["load_cv"],
            "seconds": base_s,
            **{f"dev_p{p}_own": base_eval["placements"][str(p)]["devices_per_token"] for p in (2, 4)},
            **{
                f"dev_p{p}_contiguous": base_eval["placements"][str(p)]["contiguous_devices_per_token"]
                for p in (2, 4)
            },
        },
        "wall_s": wall,
        "cpu": f"{os.cpu_count()} logical CPUs, shared",
        "arms": summary,
    }
    (out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    if not args.no_report:
        from frontier_report import write_report  # beside this script

        print(f"report: {write_report(record, docs)}")
    print(
        json.dumps(
            {k: {kk: vv for kk, vv in v.items() if kk != "per_seed"} for k, v in summary.items()}, indent=1
        )
    )
    print(f"results: {out / 'results.json'}; {wall / 60:.1f} min")
    return 0


def _write_placement_lists(base_profile: Path, layers: int, e: int) -> dict[int, Path]:
    """Collaborator lists that follow the base placement on P devices, as .npy profiles."""
    from moelight.c2r.placement_collaborators import placement_collaborator_lists
    from moelight.c2r.profile_file import read_profile

    tensors, _ = read_profile(base_profile)
    paths = {}
    for p, placement in _base_placements(base_profile, layers, e).items():
        lists = placement_collaborator_lists(placement, tensors["coactivation"])
        path = base_profile.parent / f"placement-collaborators-{p}.npy"
        np.save(path, lists.numpy().astype(np.int64))
        paths[p] = path
    return paths


def summarise(all_arms: list[Arm], results: dict[str, dict[int, dict[str, Any]]], seeds: list[int]):
    topk = results[TOPK]
    out = {}
    for arm in all_arms:
        per_seed = results[arm.name]
        mean = {k: sum(per_seed[s][k] for s in seeds) / len(seeds) for k in per_seed[seeds[0]]}
        delta = {s: per_seed[s]["val_loss"] - topk[s]["val_loss"] for s in seeds}
        dev = {}
        for p in (2, 4):
            if arm.devices is not None and arm.devices != p:
                dev[p] = None  # bound to another device count
            else:
                dev[p] = mean[f"dev_p{p}_{arm.placement}"]
        out[arm.name] = {
            "family": arm.family,
            "router": arm.router,
            "devices": arm.devices,
            "placement": arm.placement,
            "mean": mean,
            "per_seed": {str(s): per_seed[s] for s in seeds},
            "delta_vs_topk": {str(s): d for s, d in delta.items()},
            "mean_delta": sum(delta.values()) / len(seeds),
            "dev_per_token": {str(p): v for p, v in dev.items()},
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
