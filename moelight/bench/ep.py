"""`moelight bench ep`: expert-parallel training steps timed over an (emulated) interconnect.

P gloo processes train the same recipe, seed and batches under each configuration (one model,
optimizer and batch stream per configuration on every rank), steps interleaved round-robin with
the order rotated each round. The expert-parallel all2all runs on its own gloo group bound to
127.0.0.2, which `moelight.bench.netns` shapes inside a private network namespace; everything
else (DDP's dense all-reduce, bookkeeping) stays on unshaped 127.0.0.1.

Per configuration and link: the step time (slowest rank per round), the time blocked inside the
all2all calls (mean over ranks; it includes waiting for slower ranks) and the transfer time (per
call, the rank that arrived last, i.e. the call's own time; summed over the step), counted rows,
remote rows, bytes and devices per token, the bytes the collectives carried, and the projection
of `moelight bench comm`'s model from the counted rows and the link (predicted vs measured).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from moelight.bench import netns
from moelight.bench.comm import Interconnect, grouplocal_bytes_per_layer, link_time_ms
from moelight.bench.ep_configs import CONFIG_KEYS, configurations
from moelight.bench.link import (
    PRESETS,
    PUBLISHED_SHARES,
    REFERENCES,
    EmulatedLink,
    calibrate,
    custom_link,
    expert_gemm_flops,
)
from moelight.bench.timing import interleaved, paired_speedups, quantile, summarize
from moelight.data.datamodule import MoEDataModule
from moelight.errors import MoelightError
from moelight.load import load_init_weights
from moelight.model.build import build_model, layer_contexts
from moelight.moe.dispatch import ExpertParallelContext
from moelight.parallel.all_to_all import COMM, all_to_all_counts
from moelight.parallel.grad_sync import clip_by_global_norm, expert_parameters, reduce_expert_grads
from moelight.parallel.groups import build_groups
from moelight.recipe import Recipe, load_recipe
from moelight.training.optim import build_optimizer

COUNTERS = ("tokens", "rows", "remote_rows", "bytes", "device_visits")


class Candidate:
    """One configuration's model, optimizer and batch stream on this rank."""

    def __init__(self, recipe: Recipe, groups, ep: ExpertParallelContext, batches: list):
        torch.manual_seed(recipe.seed)  # the same initial model for every configuration
        model = build_model(recipe, ep)
        if recipe.model.init_from:  # a trained model: its routing, not an initial one
            load_init_weights(model, recipe.model.init_from)
        self.experts = list(expert_parameters(model).values())
        self.expert_ids = {id(p) for p in self.experts}
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, list(expert_parameters(model))
        )
        self.model = model
        self.ddp = DistributedDataParallel(model)
        self.optimizer = build_optimizer(model, recipe.optim, recipe.trainer.max_steps)["optimizer"]
        self.grad_clip = recipe.optim.grad_clip
        self.groups = groups
        self.batches = batches
        self.i = 0

    def step(self) -> None:
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        logits = self.ddp(x)
        loss = (
            F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1)) + self.model.aux_loss()
        )
        loss.backward()
        g = self.groups
        reduce_expert_grads(self.experts, g.edp_group, g.edp_size, g.world_size)
        if self.grad_clip:
            params = [p for p in self.model.parameters() if p.grad is not None]
            clip_by_global_norm(params, self.expert_ids, self.grad_clip, g.ep.group)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def reset_counters(self) -> None:
        for layer in self.model.moe_layers:
            layer.dispatcher.stats.reset()

    def warm_up(self, steps: int) -> None:
        """From the first batch again: `steps` untimed steps, then the counters start from zero."""
        self.i = 0
        for _ in range(steps):
            self.step()
        self.reset_counters()

    def counters(self) -> dict[str, int]:
        out = dict.fromkeys(COUNTERS, 0)
        for layer in self.model.moe_layers:
            for key in COUNTERS:
                out[key] += getattr(layer.dispatcher.stats, key)
        return out

    def counters_all_ranks(self) -> dict[str, float]:
        """`counters()` summed over every rank (a collective: all ranks call it together)."""
        counts = torch.tensor([self.counters()[k] for k in COUNTERS], dtype=torch.float64)
        dist.all_reduce(counts)
        return dict(zip(COUNTERS, counts.tolist()))


def per_token(counters: dict[str, float]) -> dict[str, float]:
    """Rows, remote rows, all2all bytes (both directions) and distinct devices per token."""
    tokens = counters["tokens"]
    return {
        "rows_per_token": counters["rows"] / tokens,
        "remote_rows_per_token": counters["remote_rows"] / tokens,
        "bytes_per_token": counters["bytes"] / tokens,
        "devices_per_token": counters["device_visits"] / tokens,
    }


def time_steps(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Every rank times the same configuration's step together, round-robin across configurations
    (`interleaved`), a barrier before each so no rank starts a step while another is still behind."""
    return interleaved(
        steps, repeats=repeats, warmup=0, device=torch.device("cpu"), before=lambda name: dist.barrier()
    )


def slowest_rank(times_ms: list[float]) -> list[float]:
    """Per step, the slowest rank's time (a collective): what the step cost the job."""
    t = torch.tensor(times_ms, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def batches_for_rank(recipe: Recipe, world: int, rank: int, count: int) -> list:
    """This rank's share of the recipe's first `count` global batches (the training order)."""
    data = MoEDataModule(recipe.data, seed=recipe.seed)
    sampler = iter(data.train_sampler(world, rank))
    out = []
    for _ in range(count):
        items = [data.train_dataset[next(sampler)] for _ in range(recipe.data.batch_size)]
        out.append((torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])))
    return out


@dataclass
class Args:
    recipe: str
    overrides: list[str]
    procs: int
    steps: int
    warmup: int
    threads: int
    links: list[str]  # preset names, "none", or "custom"
    custom: tuple[float, float] | None  # (bytes/s per rank, latency s)
    reference: str = "llama-moe"
    top_t: int = 1
    configs: tuple[str, ...] = CONFIG_KEYS
    burst: int = 2000
    json_path: str | None = None
    # label -> recipe overrides, replacing the standard configurations (the first is the baseline)
    config_overrides: dict[str, list[str]] | None = None
    # scale the preset's rate so the reference model's all2all-to-expert-compute ratio holds for a
    # recipe with narrower experts (`link.calibrate`'s run_flops_per_row_byte)
    match_reference_ratio: bool = False

    def configurations(self, num_experts: int) -> dict[str, list[str]]:
        if self.config_overrides:
            return dict(self.config_overrides)
        return configurations(self.procs, num_experts, self.top_t, self.configs)

    def baseline(self, num_experts: int) -> str:
        return next(iter(self.configurations(num_experts)))


def _shaped_group(store, rank: int, world: int):
    """A gloo process group whose sockets use SHAPED_ADDR (the shaped class of the namespace)."""
    # only inside a spawned rank, once gloo is initialised
    from torch.distributed import ProcessGroupGloo

    opts = ProcessGroupGloo._Options()
    opts._devices = [ProcessGroupGloo.create_device(hostname=netns.SHAPED_ADDR)]
    opts._timeout = timedelta(minutes=10)
    return ProcessGroupGloo(dist.PrefixStore("ep-shaped", store), rank, world, opts)


def _gather(values: list[float]) -> torch.Tensor:
    """[ranks, n] of every rank's values."""
    t = torch.tensor(values, dtype=torch.float64)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return torch.stack(out)


def _call_overhead_ms(group, world: int, calls: int = 40) -> float:
    """Median ms of a tiny all_to_all on `group` (unshaped, no latency, ranks in step): what gloo
    and the shared CPU add to every call on top of the emulated latency."""
    counts = torch.ones(world, dtype=torch.long)
    times = []
    for _ in range(calls):
        dist.barrier()
        t0 = time.perf_counter()
        all_to_all_counts(counts, group)
        times.append((time.perf_counter() - t0) * 1e3)
    COMM.reset()
    return float(_gather([statistics.median(times)]).max())


def _links(args: Args, cpu_flops: float, run_layer_flops: float) -> list[EmulatedLink]:
    ref = REFERENCES[args.reference]
    out = []
    for name in args.links:
        if name == "none":
            out.append(EmulatedLink("none", cpu_flops / 1e9, 0.0, 0.0, 0.0, 0.0, "loopback, unshaped"))
        elif name == "custom":
            out.append(custom_link(*args.custom))
        else:
            run_fpb = None
            if args.match_reference_ratio:
                m = load_recipe(args.recipe, args.overrides).model
                run_fpb = 6.0 * m.expert_ffn_hidden_size / 4  # fp32 rows
            out.append(calibrate(PRESETS[name], cpu_flops, run_layer_flops, ref, run_fpb))
    return out


def worker(rank: int, port: int, args: Args, out_file: str) -> None:
    torch.set_num_threads(args.threads)
    world = args.procs
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, timeout=timedelta(minutes=10))
    dist.init_process_group(
        "gloo",
        store=dist.PrefixStore("default", store),
        rank=rank,
        world_size=world,
        timeout=timedelta(minutes=10),
    )

    groups = build_groups(world, "cpu")
    ep = ExpertParallelContext(rank=groups.ep.rank, size=world, group=_shaped_group(store, rank, world))
    base = load_recipe(args.recipe, args.overrides)
    m = base.model
    tokens = base.data.batch_size * base.data.seq_len

    # Calibration: every rank at once (they share the cores, as in the run), the run's threads.
    dist.barrier()
    flops = float("nan")  # only presets are calibrated
    if any(name in PRESETS for name in args.links):
        flops = expert_gemm_flops(
            m.hidden_size, m.expert_ffn_hidden_size, tokens * m.top_k, m.num_experts // world
        )
    all_flops = _gather([flops])[:, 0].tolist()
    cpu_flops = statistics.median(all_flops)
    run_layer_flops = tokens * m.top_k * 6.0 * m.hidden_size * m.expert_ffn_hidden_size
    links = _links(args, cpu_flops, run_layer_flops)

    batches = batches_for_rank(base, world, rank, args.warmup + args.steps)
    configs = args.configurations(m.num_experts)
    candidates = {
        name: Candidate(load_recipe(args.recipe, args.overrides + extra), groups, ep, batches)
        for name, extra in configs.items()
    }
    # Every all2all starts with all ranks present (a barrier on the unshaped group first): the
    # time inside a call is then the exchange's own; waiting for slower ranks is counted apart.
    COMM.sync_group = dist.group.WORLD
    overhead = _call_overhead_ms(ep.group, world)
    results: dict[str, Any] = {
        "links": {},
        "cpu_gflops_per_rank": [f / 1e9 for f in all_flops],
        "call_overhead_ms": overhead,
    }
    for link in links:
        if rank == 0 and netns.in_namespace():
            if link.rate_per_rank:
                netns.shape(link.rate_per_rank * world, args.burst)
            else:
                netns.unshape()
        dist.barrier()
        COMM.latency_s = link.latency_s
        for c in candidates.values():  # warm-up (also re-fills the token bucket), then count
            c.warm_up(args.warmup)
        log: dict[str, list[tuple[float, int, list[float]]]] = {name: [] for name in candidates}

        def timed(name: str, log=log):
            def run() -> None:
                COMM.reset()
                candidates[name].step()
                log[name].append((COMM.seconds, COMM.bytes, list(COMM.per_call), COMM.skew_seconds))

            return run

        times = time_steps({name: timed(name) for name in candidates}, args.steps)
        per_config = {}
        for name, c in candidates.items():
            counters = c.counters_all_ranks()
            step_ms = slowest_rank(times[name])
            blocked = _gather([e[0] * 1e3 for e in log[name]])
            sent = _gather([e[1] for e in log[name]])
            skew = _gather([e[3] * 1e3 for e in log[name]])
            calls = [len(e[2]) for e in log[name]]
            per_config[name] = {
                "counters": counters,
                "step_ms": step_ms,
                "all2all_ms": blocked.mean(0).tolist(),
                "all2all_ms_per_rank": blocked.tolist(),
                "skew_ms": skew.mean(0).tolist(),
                "bytes_per_rank_step": sent.mean(0).tolist(),
                "calls_per_step": calls[0] if calls else 0,
            }
        results["links"][link.name] = {"link": link.as_dict(), "configs": per_config}
    if rank == 0:
        Path(out_file).write_text(json.dumps(results))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: Args) -> dict[str, Any]:
    """Spawn the ranks (in this process's network namespace) and assemble the report."""
    base = load_recipe(args.recipe, args.overrides)
    if base.model.num_experts % args.procs:
        raise MoelightError(f"--procs {args.procs} must divide model.num_experts ({base.model.num_experts})")
    if any(link != "none" for link in args.links):
        netns.setup_loopback()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.json")
        start = time.perf_counter()
        mp.spawn(worker, args=(free_port(), args, out), nprocs=args.procs)
        raw = json.loads(Path(out).read_text())
    return assemble(args, base, raw, time.perf_counter() - start)


def predicted_ms(
    recipe: Recipe,
    counters: dict,
    steps: int,
    procs: int,
    calls: int,
    slots: int,
    link: EmulatedLink,
    overhead_ms: float,
    hideable_ms: float = 0.0,
) -> tuple[float, float | None]:
    """`moelight bench comm`'s model on the counted rows: (bytes per rank and step, ms or None).

    The link's latency per call is the emulated one plus gloo's measured per-call overhead on
    this machine (`overhead_ms`), which the emulation cannot remove. With overlap, the transfer
    runs while the experts compute: `hideable_ms` (the step's expert GEMM time on this rank) is
    taken off the transfer, never off the per-call latency (slept when a call is issued)."""
    m = recipe.model
    layers = len(layer_contexts(recipe))
    remote_per_layer = counters["remote_rows"] / (steps * procs * layers)
    elem = 4 if recipe.trainer.precision in ("32-true", "32") else 2
    bytes_step = layers * grouplocal_bytes_per_layer(remote_per_layer, m.hidden_size, elem, slots, procs)
    if not link.rate_per_rank:
        return bytes_step, None
    latency_us = link.latency_s * 1e6 + overhead_ms * 1e3
    ic = Interconnect(link.name, link.rate_per_rank / 1e9, latency_us, link.note)
    total = link_time_ms(bytes_step, calls, ic)
    per_call = calls * latency_us / 1e3
    return bytes_step, per_call + max(0.0, total - per_call - hideable_ms)


def expert_ms_per_step(recipe: Recipe, procs: int, cpu_gflops: float) -> float:
    """This rank's expert GEMM time per training step (forward + backward, balanced load) at the
    calibrated FLOP/s: what an overlapped exchange can hide behind."""
    m = recipe.model
    layers = len(layer_contexts(recipe))
    rows = recipe.data.batch_size * recipe.data.seq_len * m.top_k  # every rank's share, balanced
    return layers * 18.0 * rows * m.hidden_size * m.expert_ffn_hidden_size / (cpu_gflops * 1e9) * 1e3


def _overlapped(overrides: list[str]) -> bool:
    return "dispatcher.overlap=false" not in overrides and "dispatcher.rows=per_expert" not in overrides


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def assemble(args: Args, recipe: Recipe, raw: dict, seconds: float) -> dict[str, Any]:
    m = recipe.model
    overrides = args.configurations(m.num_experts)
    baseline = args.baseline(m.num_experts)
    cpu_gflops = statistics.median(raw["cpu_gflops_per_rank"])
    hideable = expert_ms_per_step(recipe, args.procs, cpu_gflops) if cpu_gflops == cpu_gflops else 0.0
    tables = {}
    for link_name, entry in raw["links"].items():
        link = EmulatedLink(**entry["link"])
        configs = entry["configs"]
        base_ms = configs[baseline]["step_ms"]
        base_median = statistics.median(base_ms)
        rows = []
        for name, r in configs.items():
            c = r["counters"]
            ratios = paired_speedups(base_ms, r["step_ms"])
            # metadata slots per row: per-expert rows carry one expert, per-device rows up to k
            slots = 1 if "dispatcher.rows=per_expert" in overrides[name] else m.top_k
            overlapped = _overlapped(overrides[name])
            counted_bytes, pred = predicted_ms(
                recipe,
                c,
                args.steps,
                args.procs,
                r["calls_per_step"],
                slots,
                link,
                raw["call_overhead_ms"],
                hideable if overlapped else 0.0,
            )
            step = summarize(r["step_ms"]).as_dict()
            blocked = _median(r["all2all_ms"])
            # The same configuration with the all2all's cost removed: per step, the step minus the
            # time blocked in the exchanges (mean over ranks); how far this configuration got from
            # the baseline towards that limit.
            limit = _median([s - a for s, a in zip(r["step_ms"], r["all2all_ms"])])
            gap = base_median - limit
            rows.append(
                {
                    "config": name,
                    **per_token(c),
                    "step": step,
                    "all2all_ms": blocked,
                    "all2all_q1_ms": quantile(r["all2all_ms"], 0.25),
                    "all2all_q3_ms": quantile(r["all2all_ms"], 0.75),
                    "skew_ms": _median(r["skew_ms"]),
                    "all2all_share": blocked / step["median_ms"],
                    "compute_ms": step["median_ms"] - blocked,
                    "predicted_ms": pred,
                    "predicted_over_measured": None if pred is None else pred / blocked,
                    "measured_bytes_per_rank_step": statistics.fmean(r["bytes_per_rank_step"]),
                    "counted_bytes_per_rank_step": counted_bytes,
                    "calls_per_step": r["calls_per_step"],
                    "speedup": statistics.median(ratios),
                    "speedup_q1": quantile(ratios, 0.25),
                    "speedup_q3": quantile(ratios, 0.75),
                    "step_time_change": statistics.median(r["step_ms"]) / statistics.median(base_ms) - 1,
                    "overlap": overlapped,
                    "limit_ms": limit,
                    "limit_speedup": base_median / limit,
                    "fraction_to_limit": (base_median - step["median_ms"]) / gap if gap > 0 else None,
                    "raw": r,
                }
            )
        best = min(rows, key=lambda row: row["limit_ms"])
        limit_row = {"config": f"limit: {best['config']} without all2all", "limit_ms": best["limit_ms"],
                     "speedup": base_median / best["limit_ms"]}  # fmt: skip
        tables[link_name] = {
            "link": entry["link"],
            "description": link.describe(args.procs),
            "rows": rows,
            "limit": limit_row,
        }
    ref = REFERENCES[args.reference]
    return {
        "kind": "ep",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} torch thread(s) per rank",
        "torch": torch.__version__,
        "recipe": args.recipe,
        "overrides": args.overrides,
        "procs": args.procs,
        "steps": args.steps,
        "warmup": args.warmup,
        "top_t": args.top_t,
        "burst_bytes": args.burst,
        "model": {
            "layers": m.n_layers,
            "hidden": m.hidden_size,
            "ffn": m.expert_ffn_hidden_size,
            "experts": m.num_experts,
            "top_k": m.top_k,
            "tokens_per_rank_per_step": recipe.data.batch_size * recipe.data.seq_len,
        },
        "reference": {
            "name": ref.name,
            "flops_per_row_byte": ref.flops_per_row_byte(),
            "run_flops_per_row_byte": 6.0 * m.expert_ffn_hidden_size / 4,
        },
        "cpu_gflops_per_rank": raw["cpu_gflops_per_rank"],
        "call_overhead_ms": raw["call_overhead_ms"],
        "expert_ms_per_step": hideable,
        "baseline": baseline,
        "published_shares": PUBLISHED_SHARES,
        "seconds": seconds,
        "links": tables,
    }


def print_report(result: dict[str, Any]) -> None:
    m = result["model"]
    ref = result["reference"]
    print(
        f"{result['machine']}; {result['procs']} gloo processes; recipe {result['recipe']}: {m['layers']} layers, "
        f"hidden {m['hidden']}, {m['experts']} experts of FFN {m['ffn']}, top-{m['top_k']}, "
        f"{m['tokens_per_rank_per_step']} tokens/rank/step; {result['steps']} timed steps per config "
        f"after {result['warmup']} warm-up"
    )
    print(
        f"expert FLOPs per row-byte: run {ref['run_flops_per_row_byte']:.0f} (fp32) vs "
        f"{ref['name']} {ref['flops_per_row_byte']:.0f}"
    )
    print("CPU GFLOP/s per rank (expert GEMMs, all ranks at once): "
          + ", ".join(f"{g:.1f}" for g in result["cpu_gflops_per_rank"])
          + f"; gloo overhead per all2all call: {result['call_overhead_ms']:.2f} ms")  # fmt: skip
    for table in result["links"].values():
        print(f"\n== link {table['description']}")
        header = (
            f"{'config':<36}{'rows/tok':>9}{'remote':>8}{'B/tok':>8}{'dev/tok':>8}{'step ms':>9}{'IQR':>7}"
            f"{'a2a ms':>8}{'share':>7}{'skew ms':>8}{'pred ms':>8}{'pred/m':>7}{'B meas/cnt':>11}"
            f"{'speed-up [q1,q3]':>20}{'to limit':>9}"
        )
        print(header)
        print("-" * len(header))
        for r in table["rows"]:
            s = r["step"]
            pred = "-" if r["predicted_ms"] is None else f"{r['predicted_ms']:.0f}"
            ratio = "-" if r["predicted_over_measured"] is None else f"{r['predicted_over_measured']:.2f}"
            bytes_ratio = r["measured_bytes_per_rank_step"] / r["counted_bytes_per_rank_step"]
            print(
                f"{r['config']:<36}{r['rows_per_token']:>9.3f}{r['remote_rows_per_token']:>8.3f}"
                f"{r['bytes_per_token']:>8.0f}{r['devices_per_token']:>8.3f}{s['median_ms']:>9.0f}"
                f"{s['iqr_ms']:>7.0f}{r['all2all_ms']:>8.0f}{r['all2all_share']:>7.0%}{r['skew_ms']:>8.0f}"
                f"{pred:>8}{ratio:>7}{bytes_ratio:>11.4f}"
                f"{r['speedup']:>9.2f}x [{r['speedup_q1']:.2f},{r['speedup_q3']:.2f}]"
                f"{_pct(r['fraction_to_limit']):>9}"
            )
        lim = table["limit"]
        print(f"{lim['config']:<36}{'':>49}{lim['limit_ms']:>9.0f}{'':>92}{lim['speedup']:>9.2f}x")
        base = table["rows"][0]
        print(
            f"baseline all2all share of step time: {base['all2all_share']:.0%} "
            f"(published: {result['published_shares']})"
        )
    print(f"({result['seconds']:.0f}s)")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _spread(values: list[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def run_repeated(args: Args, repeats: int) -> dict[str, Any]:
    """`run` `repeats` times (calibration included), with the load average before and after each;
    per link and configuration the median and range over repeats of the speed-up, step time,
    all2all share, predicted/measured and fraction of the way to the limit."""
    if repeats < 1:
        raise MoelightError(f"--repeats {repeats}: must be at least 1")
    runs = []
    cpus = os.cpu_count() or 1
    for i in range(repeats):
        before = os.getloadavg()
        result = run(args)
        after = os.getloadavg()
        result["load_before"], result["load_after"] = list(before), list(after)
        result["loaded"] = max(before[0], after[0]) > cpus
        runs.append(result)
        print(f"repeat {i + 1}/{repeats}: load average {before[0]:.1f} -> {after[0]:.1f} ({cpus} CPUs)"
              + (" LOADED" if result["loaded"] else ""), flush=True)  # fmt: skip
    summary: dict[str, Any] = {}
    for link_name, table in runs[0]["links"].items():
        per_config = {}
        for i, row in enumerate(table["rows"]):
            rows = [r["links"][link_name]["rows"][i] for r in runs]
            per_config[row["config"]] = {
                key: _spread([r[key] for r in rows])
                for key in (
                    "speedup",
                    "all2all_share",
                    "predicted_over_measured",
                    "fraction_to_limit",
                    "devices_per_token",
                    "all2all_ms",
                    "limit_ms",
                )
            }
            per_config[row["config"]]["step_ms"] = _spread([r["step"]["median_ms"] for r in rows])
        limits = [r["links"][link_name]["limit"] for r in runs]
        summary[link_name] = {
            "description": table["description"],
            "configs": per_config,
            "limit": {
                "config": limits[0]["config"],
                "limit_ms": _spread([x["limit_ms"] for x in limits]),
                "speedup": _spread([x["speedup"] for x in limits]),
            },
        }
    return {
        "kind": "ep-repeated",
        "repeats": repeats,
        "loaded": any(r["loaded"] for r in runs),
        "load": [[r["load_before"][0], r["load_after"][0]] for r in runs],
        "cpus": cpus,
        "summary": summary,
        "runs": runs,
    }


def _range(s: dict[str, float | None], fmt: str, suffix: str = "") -> str:
    if s["median"] is None:
        return "-"
    return f"{s['median']:{fmt}}{suffix} [{s['min']:{fmt}}-{s['max']:{fmt}}]"


def print_repeated(result: dict[str, Any]) -> None:
    """The per-configuration medians and ranges over repeats."""
    loads = ", ".join(f"{a:.1f}->{b:.1f}" for a, b in result["load"])
    flag = (
        "; LOADED: the load average exceeded the core count, figures move with load"
        if result["loaded"]
        else ""
    )
    print(
        f"\n== {result['repeats']} repeats; load average before->after: {loads} ({result['cpus']} CPUs){flag}"
    )
    for link_name, table in result["summary"].items():
        print(f"-- link {link_name}: median [min-max] over repeats")
        header = (
            f"{'config':<48}{'speed-up':>22}{'step ms':>22}{'a2a share':>20}{'pred/meas':>20}{'to limit':>20}"
        )
        print(header)
        for name, c in table["configs"].items():
            print(
                f"{name:<48}{_range(c['speedup'], '.2f', 'x'):>22}{_range(c['step_ms'], '.0f'):>22}"
                f"{_range(c['all2all_share'], '.0%'):>20}{_range(c['predicted_over_measured'], '.2f'):>20}"
                f"{_range(c['fraction_to_limit'], '.0%'):>20}"
            )
        lim = table["limit"]
        print(
            f"{lim['config']:<48}{_range(lim['speedup'], '.2f', 'x'):>22}{_range(lim['limit_ms'], '.0f'):>22}"
        )
