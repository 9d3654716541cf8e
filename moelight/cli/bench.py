"""`moelight bench layer|step|comm|ep`: dispatcher benchmarks, the all2all projection, and
expert-parallel training over an emulated interconnect."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import Namespace
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveInt
from rich.console import Console

from moelight.bench import comm, ep_configs, link, netns
from moelight.bench.candidates import parse_candidates
from moelight.bench.layer import bench_layer
from moelight.bench.presets import DTYPES, PRESETS, get_preset, shape_from
from moelight.bench.reference import GEMM_ONLY, HF_LOOP
from moelight.bench.report import environment, print_comm, print_timing, write_json
from moelight.bench.step import bench_step
from moelight.cli.verb_parser import CommaList, VerbParser
from moelight.errors import MoelightError
from moelight.recipe import load_recipe
from moelight.registry import dispatchers

LAYER = """One MoE layer (router + dispatcher), forward + backward, every candidate on the same router,
expert weights and input; repeats are interleaved across candidates, ratios are paired."""
STEP = """A full training step (forward, backward, clipping, AdamW) of the recipe's model, one model per
candidate from the same seed; random token batches of data.batch_size x data.seq_len; the
recipe's trainer.precision (32-true, bf16-mixed, bf16-true) is honoured."""
COMM = """Projected all2all time per training step for P devices: per-expert dispatch (k rows per token)
vs grouplocal (one row per distinct device) under top-k and C2R routing."""
EP = """Expert-parallel training steps of P gloo processes, per configuration (top-k + per-expert rows,
top-k + grouplocal, C2R profile + collaboration-aware placement + grouplocal, C2R placement +
grouplocal, and the last with overlap), same seed and batches, interleaved; per link: step time,
time inside the all2all, rows / remote rows / bytes / devices per token, predicted vs measured
all2all time, speed-up vs top-k per-expert."""
MEMORY = """Per rank: bytes of parameters, gradients, AdamW state, activations (under the checkpointing
mode), the loss head's logits, transient buffers and the peak, plus host memory for offload, by
arithmetic (nothing is allocated; validated against measured peaks in docs/benchmarks.md)."""
DISPATCHERS = """comma-separated; a dispatcher with params is name:key=value[:key=value]
(e.g. grouplocal:kernels=torch). Also: hf-loop (Hugging Face's per-expert Python loop),
gemm-only (ExpertWeights.grouped on pre-sorted rows)."""
DEVICE = "auto, cpu, cuda or cuda:N"
THREADS = "torch CPU threads (default: torch's choice)"
JSON = "write the results (with every repeat's time) as JSON"


def add_timing(p: VerbParser, repeats: int, warmup: int) -> None:
    """Options every timed candidate comparison shares (layer, step)."""
    p.add_argument("--baseline", help="the candidate ratios are taken against")
    p.add_argument("--repeats", type=PositiveInt, default=repeats, help="timed repeats per candidate")
    p.add_argument("--warmup", type=NonNegativeInt, default=warmup, help="untimed repeats first")
    p.add_argument("--device", default="auto", help=DEVICE)
    p.add_argument("--threads", type=PositiveInt | None, help=THREADS)
    p.add_argument("--json", metavar="PATH", help=JSON)


def parser() -> VerbParser:
    p = VerbParser(
        "moelight bench",
        "Dispatcher benchmarks, the all2all projection, and expert-parallel "
        "training over an emulated interconnect.",
    )
    layer = p.subcommand("layer", "one MoE layer, every dispatcher on the same routing", LAYER)
    layer.add_argument("--preset", type=Literal[tuple(PRESETS)], default="cpu-small", help="layer shape")
    for name in ("tokens", "hidden", "ffn", "experts", "top-k"):
        layer.add_argument(f"--{name}", type=PositiveInt | None, help="overrides the preset's")
    layer.add_argument("--dtype", type=Literal[tuple(DTYPES)] | None, help="overrides the preset's")
    layer.add_argument(
        "--dispatchers", help=DISPATCHERS + " Default: every available dispatcher, then hf-loop."
    )
    layer.add_argument(
        "--router",
        default="topk",
        help="router for all candidates (e.g. c2r:top_t=1:collaborators=placement)",
    )
    layer.add_argument("--seed", type=NonNegativeInt, default=0, help="seed of weights, inputs and routing")
    layer.add_argument(
        "--no-check", action="store_true", help="skip comparing each candidate's output with sorted's"
    )
    add_timing(layer, repeats=20, warmup=3)

    step = p.subcommand("step", "a full training step of a recipe's model per dispatcher", STEP)
    step.add_argument(
        "recipe", nargs="?", metavar="RECIPE.yaml", help="default: the embedded quickstart recipe"
    )
    step.add_argument("--dispatchers", help=DISPATCHERS + " Default: every available dispatcher.")
    add_timing(step, repeats=10, warmup=2)
    step.add_overrides()

    c = p.subcommand("comm", "projected all2all time: per-expert vs grouplocal, top-k vs C2R", COMM)
    c.add_argument(
        "--preset",
        type=Literal[tuple(PRESETS)],
        default="llama-moe-3.5b",
        help="hidden size, top-k, experts, MoE layers, dtype",
    )
    c.add_argument(
        "--profile",
        metavar="PATH",
        help="co-activation counts or collaborator lists (.npy/.json, [layers, E, E])",
    )
    c.add_argument(
        "--routing",
        metavar="PATH",
        help="recorded expert ids (.npy/.json, [T, k] or [layers, T, k]), counted exactly",
    )
    for name in ("top-k", "experts", "hidden", "layers"):
        c.add_argument(f"--{name}", type=PositiveInt | None, help="overrides the preset's (or the profile's)")
    c.add_argument("--dtype", type=Literal[tuple(DTYPES)] | None, help="overrides the preset's")
    c.add_argument("--tokens", type=PositiveInt, default=16384, help="tokens per device")
    c.add_argument(
        "--top-t", type=PositiveInt | None, help="also model C2R with profile collaborators at this T"
    )
    c.add_argument(
        "--devices",
        type=CommaList(PositiveInt, what="integers, each at least 1"),
        default=[2, 4, 8, 16, 32, 64],
        help="device counts",
    )
    c.add_argument(
        "--interconnect",
        type=CommaList(choices=comm.INTERCONNECTS),
        default=list(comm.INTERCONNECTS),
        help="the interconnects to project for",
    )
    c.add_argument(
        "--bandwidth-gbs", type=NonNegativeFloat | None, help="a custom interconnect instead (GB/s)"
    )
    c.add_argument("--latency-us", type=NonNegativeFloat | None, help="the custom interconnect's latency")
    c.add_argument(
        "--meta-bytes",
        type=NonNegativeInt,
        default=8,
        help="grouplocal metadata bytes per expert slot of a row",
    )
    c.add_argument("--samples", type=PositiveInt, default=200_000, help="Monte-Carlo samples")
    c.add_argument("--seed", type=NonNegativeInt, default=0, help="seed of the sampled routings")
    c.add_argument("--json", metavar="PATH", help=JSON)

    m = p.subcommand("memory", "per-rank memory plan of a recipe (no model is built)", MEMORY)
    m.add_argument("recipe", nargs="?", metavar="RECIPE.yaml", help="default: the embedded quickstart recipe")
    m.add_argument(
        "--devices", type=PositiveInt | None, help="ranks N (default: the recipe's devices x nodes)"
    )
    m.add_argument("--expert-parallel", type=PositiveInt | None, help="P (default: parallel.expert_parallel)")
    m.add_argument("--micro-batch", type=PositiveInt | None, help="rows per rank (default: data.batch_size)")
    m.add_argument("--seq-len", type=PositiveInt | None, help="tokens per row (default: data.seq_len)")
    m.add_argument(
        "--checkpointing",
        type=Literal["none", "full", "moe", "attention"] | None,
        help="default: trainer.activation_checkpointing",
    )
    m.add_argument("--fsdp", action="store_true", help="plan FSDP2 sharding (default: the recipe's)")
    m.add_argument(
        "--offload",
        type=Literal["none", "optimizer", "params"] | None,
        help="state in host memory: optimizer (AdamW moments) or params (+ parameters and gradients)",
    )
    m.add_argument("--precision", help="default: trainer.precision (32-true, bf16-mixed, bf16-true)")
    m.add_argument(
        "--gpu-memory",
        type=NonNegativeFloat | None,
        metavar="GB",
        help="exit 2 when the peak exceeds this (GiB)",
    )
    m.add_argument("--json", metavar="PATH", help=JSON)
    m.add_overrides()

    e = p.subcommand("ep", "expert-parallel training steps over an emulated interconnect", EP)
    e.add_argument(
        "recipe",
        nargs="?",
        metavar="RECIPE.yaml",
        default=str(Path(ep_configs.ROOT) / "recipes" / "ep-bench.yaml"),
    )
    e.add_argument(
        "--link",
        type=CommaList(what="links"),
        default=["none"],
        help=f"{', '.join(link.PRESETS)}, none (loopback, unshaped), or a rate per rank (e.g. 20mbit) "
        "with --latency T (e.g. 2ms). Presets are calibrated to this CPU's measured expert-GEMM "
        "FLOP/s. Shaping needs root, unshare and tc: the run re-executes itself in a private "
        "network namespace (loopback only).",
    )
    e.add_argument("--latency", help="the latency of a --link rate (e.g. 2ms)")
    e.add_argument("--procs", type=Literal[2, 4, 8], default=2, help="expert-parallel processes")
    e.add_argument("--steps", type=PositiveInt, default=8, help="timed steps")
    e.add_argument("--warmup", type=PositiveInt, default=2, help="untimed steps first")
    e.add_argument(
        "--repeats",
        type=PositiveInt,
        default=3,
        help="whole measurements (calibration included); per configuration the median and range over "
        "them, with the load average before and after each",
    )
    e.add_argument("--threads", type=PositiveInt, default=1, help="torch CPU threads per rank")
    e.add_argument("--top-t", type=PositiveInt, default=1, help="C2R's candidates per token")
    e.add_argument(
        "--reference",
        type=Literal[tuple(link.REFERENCES)],
        default="llama-moe",
        help="the model whose expert GEMMs the link presets are calibrated against",
    )
    e.add_argument("--burst", type=PositiveInt, default=2000, help="bytes of the link's token bucket")
    e.add_argument(
        "--configs",
        type=CommaList(choices=ep_configs.CONFIG_KEYS),
        default=list(ep_configs.CONFIG_KEYS),
        help="a subset (the per-expert baseline always runs)",
    )
    e.add_argument("--json", metavar="PATH", help=JSON)
    e.add_overrides()
    return p


def _default_dispatchers() -> list[str]:
    names = []
    for name in dispatchers.names():
        cls = dispatchers.get(name)
        if not (hasattr(cls, "unavailable_reason") and cls.unavailable_reason()):
            names.append(name)
    return names


def _baseline(baseline: str | None, labels: list[str], prefer: str | None = None) -> str:
    if baseline is None:
        return prefer if prefer in labels else labels[0]
    if baseline not in labels:
        raise MoelightError(f"--baseline {baseline!r} must be one of the candidates: {', '.join(labels)}")
    return baseline


def _set_threads(threads: int | None) -> None:
    """Fewer CPU threads than cores steadies timings on a shared machine; recorded in the env."""
    if threads is not None:
        torch.set_num_threads(threads)


def _finish(result: dict, json_path: str | None, argv: list[str], printer) -> int:
    result["env"] = environment(result.get("device"))
    result["command"] = "moelight bench " + shlex.join(argv)
    # Wide tables: when piped (CI logs, docs) rich would otherwise wrap at 80 columns.
    printer(result, Console() if sys.stdout.isatty() else Console(width=200))
    if json_path:
        write_json(json_path, result)
        Console(stderr=True).print(f"wrote {json_path}")
    return 0


def run_layer(a: Namespace, argv: list[str]) -> int:
    _set_threads(a.threads)
    sizes = {"tokens": a.tokens, "hidden": a.hidden, "ffn": a.ffn, "experts": a.experts, "top_k": a.top_k}
    shape = shape_from(a.preset, dtype=a.dtype, **sizes)
    candidates = parse_candidates(a.dispatchers or ",".join(_default_dispatchers() + [HF_LOOP]))
    labels = [c.label for c in candidates]
    result = bench_layer(
        shape,
        candidates,
        _baseline(a.baseline, labels, HF_LOOP),
        router=a.router,
        repeats=a.repeats,
        warmup=a.warmup,
        device=a.device,
        seed=a.seed,
        check=not a.no_check,
    )
    return _finish(result, a.json, argv, print_timing)


def run_step(a: Namespace, argv: list[str]) -> int:
    _set_threads(a.threads)
    recipe = load_recipe(a.recipe, a.overrides)
    candidates = parse_candidates(a.dispatchers or ",".join(_default_dispatchers()))
    if any(c.name == GEMM_ONLY for c in candidates):
        raise MoelightError("'gemm-only' times expert GEMMs alone: use it with `moelight bench layer`")
    labels = [c.label for c in candidates]
    result = bench_step(
        recipe, candidates, _baseline(a.baseline, labels), repeats=a.repeats, warmup=a.warmup, device=a.device
    )
    result["recipe"] = a.recipe
    return _finish(result, a.json, argv, print_timing)


def _routing_source(a: Namespace, preset) -> comm.RoutingSource:
    if a.profile and a.routing:
        raise MoelightError("give either --profile or --routing, not both")
    if a.profile:
        source = comm.load_profile(a.profile, a.top_k or preset.top_k)
        if a.experts is not None and a.experts != source.num_experts:
            raise MoelightError(f"--experts {a.experts} but {a.profile} has {source.num_experts} experts")
        return source
    if a.routing:
        return comm.load_routing(a.routing, a.experts)
    e, k = a.experts or preset.experts, a.top_k or preset.top_k
    if k > e:
        raise MoelightError(f"--top-k ({k}) must be <= --experts ({e})")
    return comm.RoutingSource("synthetic", None, e, k, preset.layers)


def _interconnects(a: Namespace) -> list[comm.Interconnect]:
    if a.bandwidth_gbs is None and a.latency_us is None:
        return [comm.INTERCONNECTS[n] for n in a.interconnect]
    if not a.bandwidth_gbs:
        raise MoelightError("a custom interconnect needs --bandwidth-gbs > 0 (and optionally --latency-us)")
    return [comm.Interconnect("custom", a.bandwidth_gbs, a.latency_us or 0.0, "given on the command line")]


def run_comm(a: Namespace, argv: list[str]) -> int:
    preset = get_preset(a.preset)
    source = _routing_source(a, preset)
    has_layers = source.kind != "synthetic" and source.layers > 1
    setup = comm.Setup(
        tokens_per_device=a.tokens,
        hidden=a.hidden or preset.hidden,
        dtype_bytes=DTYPES[a.dtype or preset.dtype].itemsize,
        layers=a.layers or (source.layers if has_layers else preset.layers),
        top_k=source.top_k,
        meta_bytes_per_expert=a.meta_bytes,
    )
    result = comm.project(
        source, setup, a.devices, _interconnects(a), top_t=a.top_t, samples=a.samples, seed=a.seed
    )
    return _finish(result, a.json, argv, print_comm)


def run_ep(a: Namespace, argv: list[str]) -> int:
    custom = None
    links = []
    for name in a.link:
        if name in link.PRESETS or name == "none":
            links.append(name)
        else:
            custom = (link.parse_rate(name), link.parse_latency(a.latency or "0ms"))
            links.append("custom")
    if a.latency and custom is None:
        raise MoelightError("--latency goes with a --link rate (e.g. --link 20mbit --latency 2ms)")
    if any(n != "none" for n in links) and not netns.in_namespace():
        netns.require()
        return netns.run_in_namespace(["bench", *argv])
    # the training stack (Lightning, the model) is imported when `bench ep` runs, not for every
    # `moelight bench` command: it triples their start-up time
    from moelight.bench import ep

    overrides = ["dispatcher.name=grouplocal", f"parallel.expert_parallel={a.procs}", *a.overrides]
    args = ep.Args(
        recipe=a.recipe,
        overrides=overrides,
        procs=a.procs,
        steps=a.steps,
        warmup=a.warmup,
        threads=a.threads,
        links=links,
        custom=custom,
        reference=a.reference,
        top_t=a.top_t,
        configs=tuple(a.configs),
        burst=a.burst,
        json_path=a.json,
    )
    repeated = ep.run_repeated(args, a.repeats)
    for one in repeated["runs"]:
        ep.print_report(one)
    ep.print_repeated(repeated)
    # the first repeat's full record at the top (the single-run layout plots and tables read),
    # every repeat and the summary under "repeated"
    result = {**repeated["runs"][0], "repeated": repeated}
    result["command"] = "moelight bench " + shlex.join(argv)
    if a.json:
        write_json(a.json, result)
        print(f"wrote {a.json}")
    return 0


def run_memory(a: Namespace, argv: list[str]) -> int:
    # lazy, as bench ep: only `bench memory` needs the plan
    from moelight.memory.plan import plan, setup_from_recipe
    from moelight.memory.report import fits, plan_json, plan_lines

    recipe = load_recipe(a.recipe, a.overrides)
    setup = setup_from_recipe(
        recipe,
        devices=a.devices,
        expert_parallel=a.expert_parallel,
        micro_batch=a.micro_batch,
        seq_len=a.seq_len,
        checkpointing=a.checkpointing,
        fsdp=a.fsdp or None,
        offload=a.offload,
        precision=a.precision,
    )
    if setup.devices % setup.expert_parallel:
        raise MoelightError(
            f"--expert-parallel {setup.expert_parallel} must divide the {setup.devices} ranks (--devices)"
        )
    if recipe.model.num_experts % setup.expert_parallel:
        raise MoelightError(
            f"--expert-parallel {setup.expert_parallel} must divide model.num_experts ({recipe.model.num_experts})"
        )
    result = plan(recipe, setup)
    print("\n".join(plan_lines(result, a.gpu_memory)))
    if a.json:
        write_json(a.json, plan_json(result) | {"command": "moelight bench " + shlex.join(argv)})
        print(f"wrote {a.json}")
    if a.gpu_memory is not None and not fits(result, a.gpu_memory):
        raise MoelightError(
            f"the plan's peak {result.peak / 2**30:.1f} GiB per rank exceeds --gpu-memory {a.gpu_memory:g} GiB "
            "(try --checkpointing full, --fsdp, --offload optimizer, or a smaller --micro-batch)"
        )
    return 0


SUBCOMMANDS = {"layer": run_layer, "step": run_step, "comm": run_comm, "ep": run_ep, "memory": run_memory}


def run(argv: list[str]) -> int:
    args = parser().parse(argv)
    if args is None:
        return 0
    return SUBCOMMANDS[args.command](args[args.command], argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1:]))
