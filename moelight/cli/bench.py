"""`moelight bench layer|step|comm|ep`: dispatcher benchmarks, the all2all projection, and
expert-parallel training over an emulated interconnect."""

from __future__ import annotations

import shlex
import sys

from rich.console import Console

from moelight.cli.args import split_args
from moelight.errors import MoelightError

HELP = """usage: moelight bench layer|step|comm|ep [options]

moelight bench layer [--preset NAME] [--dispatchers LIST] [--baseline NAME] [options]
  One MoE layer (router + dispatcher), forward + backward, every candidate on the same router,
  expert weights and input; repeats are interleaved across candidates, ratios are paired.
  --preset NAME        layer shape (default cpu-small): {presets}
  --tokens/--hidden/--ffn/--experts/--top-k N, --dtype fp32|bf16|fp16   override the preset
  --dispatchers LIST   comma-separated; a dispatcher with params is name:key=value[:key=value]
                       (e.g. grouplocal:kernels=torch). Also: hf-loop (Hugging Face's per-expert
                       Python loop), gemm-only (ExpertWeights.grouped on pre-sorted rows).
                       Default: every available dispatcher, then hf-loop.
  --baseline NAME      the candidate ratios are taken against (default: hf-loop if listed, else the first)
  --router SPEC        router for all candidates (default topk; e.g. c2r:top_t=1:collaborators=placement)
  --repeats N (20)  --warmup N (3)  --seed N (0)  --device auto|cpu|cuda (auto)  --no-check
  --threads N          torch CPU threads (default: torch's choice)
  --json PATH          write the results (with every repeat's time) as JSON

moelight bench step [RECIPE.yaml] [key.path=value ...] [--dispatchers LIST] [options]
  A full training step (forward, backward, clipping, AdamW) of the recipe's model, one model per
  candidate from the same seed; random token batches of data.batch_size x data.seq_len; the
  recipe's trainer.precision (32-true, bf16-mixed, bf16-true) is honoured.
  --dispatchers LIST (default: every available dispatcher)  --baseline NAME  --repeats N (10)
  --warmup N (2)  --device auto|cpu|cuda  --threads N  --json PATH

moelight bench comm [--preset NAME] [--profile PATH | --routing PATH] [options]
  Projected all2all time per training step for P devices: per-expert dispatch (k rows per token)
  vs grouplocal (one row per distinct device) under top-k and C2R routing.
  --profile PATH       co-activation counts or collaborator lists (.npy/.json, [layers, E, E])
  --routing PATH       recorded expert ids (.npy/.json, [T, k] or [layers, T, k]), counted exactly
  --preset NAME        hidden size, top-k, experts, MoE layers, dtype (default llama-moe-3.5b)
  --top-k N  --experts N  --hidden N  --dtype D  --layers N  --tokens N (per device, default 16384)
  --top-t T            also model C2R with profile collaborators at this T
  --devices LIST       device counts (default 2,4,8,16,32,64)
  --interconnect LIST  {interconnects} (default both)
  --bandwidth-gbs X  --latency-us X   a custom interconnect instead
  --meta-bytes N       grouplocal metadata bytes per expert slot of a row (default 8)
  --samples N (200000)  --seed N  --json PATH

moelight bench ep [RECIPE.yaml] [key.path=value ...] --link LIST [options]
  Expert-parallel training steps of P gloo processes, per configuration (top-k + per-expert rows,
  top-k + grouplocal, C2R profile + collaboration-aware placement + grouplocal, C2R placement +
  grouplocal, and the last with overlap), same seed and batches, interleaved; per link: step time,
  time inside the all2all, rows / remote rows / bytes / devices per token, predicted vs measured
  all2all time, speed-up vs top-k per-expert. Default recipe: recipes/ep-bench.yaml.
  --link LIST          comma-separated: {links}, none (loopback, unshaped), or a rate per rank
                       (e.g. 20mbit) with --latency T (e.g. 2ms). Presets are calibrated to this
                       CPU's measured expert-GEMM FLOP/s. Shaping needs root, unshare and tc: the
                       run re-executes itself in a private network namespace (loopback only).
  --procs 2|4 (2)  --steps N (8)  --warmup N (2)  --threads N (1 per rank)  --top-t T (1)
  --reference llama-moe|qwen1.5-moe (llama-moe)  --burst BYTES (2000)  --json PATH
  --configs LIST       a subset of {configs} (the per-expert baseline always runs)
"""

LAYER_FLAGS = (
    "--preset",
    "--tokens",
    "--hidden",
    "--ffn",
    "--experts",
    "--top-k",
    "--dtype",
    "--dispatchers",
    "--baseline",
    "--router",
    "--repeats",
    "--warmup",
    "--seed",
    "--device",
    "--threads",
    "--json",
)
STEP_FLAGS = ("--dispatchers", "--baseline", "--repeats", "--warmup", "--device", "--threads", "--json")
COMM_FLAGS = (
    "--preset",
    "--profile",
    "--routing",
    "--top-k",
    "--experts",
    "--hidden",
    "--dtype",
    "--layers",
    "--tokens",
    "--top-t",
    "--devices",
    "--interconnect",
    "--bandwidth-gbs",
    "--latency-us",
    "--meta-bytes",
    "--samples",
    "--seed",
    "--json",
)


def _int(flags: dict, name: str, default: int | None = None, minimum: int = 0) -> int | None:
    raw = flags.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise MoelightError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise MoelightError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(flags: dict, name: str) -> float | None:
    raw = flags.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise MoelightError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise MoelightError(f"{name} must be >= 0, got {value}")
    return value


def _default_dispatchers() -> list[str]:
    # imported when the verb runs, not with the CLI: `moelight --help` stays fast
    from moelight.registry import dispatchers

    names = []
    for name in dispatchers.names():
        cls = dispatchers.get(name)
        if not (hasattr(cls, "unavailable_reason") and cls.unavailable_reason()):
            names.append(name)
    return names


def _baseline(flags: dict, labels: list[str], prefer: str | None = None) -> str:
    baseline = flags.get("--baseline")
    if baseline is None:
        return prefer if prefer in labels else labels[0]
    if baseline not in labels:
        raise MoelightError(f"--baseline {baseline!r} must be one of the candidates: {', '.join(labels)}")
    return baseline


def _set_threads(flags: dict) -> None:
    """Fewer CPU threads than cores steadies timings on a shared machine; recorded in the env."""
    # imported when the verb runs, not with the CLI: `moelight --help` stays fast
    import torch

    threads = _int(flags, "--threads", minimum=1)
    if threads is not None:
        torch.set_num_threads(threads)


def _finish(result: dict, flags: dict, argv: list[str], printer) -> int:
    # imported when the verb runs, not with the CLI: `moelight --help` stays fast
    from moelight.bench.report import environment, write_json

    result["env"] = environment(result.get("device"))
    result["command"] = "moelight bench " + shlex.join(argv)
    # Wide tables: when piped (CI logs, docs) rich would otherwise wrap at 80 columns.
    printer(result, Console() if sys.stdout.isatty() else Console(width=200))
    if flags.get("--json"):
        write_json(flags["--json"], result)
        Console(stderr=True).print(f"wrote {flags['--json']}")
    return 0


def run_layer(argv: list[str]) -> int:
    # imported when the verb runs, not with the CLI: `moelight --help` stays fast
    from moelight.bench.candidates import parse_candidates
    from moelight.bench.layer import bench_layer
    from moelight.bench.presets import shape_from
    from moelight.bench.reference import HF_LOOP
    from moelight.bench.report import print_timing

    args = split_args(argv[1:], value_flags=LAYER_FLAGS, bool_flags=("--no-check",), positional=False)
    if args.overrides:
        raise MoelightError(f"`bench layer` takes no recipe overrides (got {' '.join(args.overrides)})")
    f = args.flags
    _set_threads(f)
    shape = shape_from(
        f.get("--preset", "cpu-small"),
        tokens=_int(f, "--tokens", minimum=1),
        hidden=_int(f, "--hidden", minimum=1),
        ffn=_int(f, "--ffn", minimum=1),
        experts=_int(f, "--experts", minimum=1),
        top_k=_int(f, "--top-k", minimum=1),
        dtype=f.get("--dtype"),
    )
    spec = f.get("--dispatchers") or ",".join(_default_dispatchers() + [HF_LOOP])
    candidates = parse_candidates(spec)
    labels = [c.label for c in candidates]
    result = bench_layer(
        shape,
        candidates,
        _baseline(f, labels, HF_LOOP),
        router=f.get("--router", "topk"),
        repeats=_int(f, "--repeats", 20, minimum=1),
        warmup=_int(f, "--warmup", 3),
        device=f.get("--device", "auto"),
        seed=_int(f, "--seed", 0),
        check=not f.get("--no-check"),
    )
    return _finish(result, f, argv, print_timing)


def run_step(argv: list[str]) -> int:
    # imported when the verb runs, not with the CLI: `moelight --help` stays fast
    from moelight.bench.candidates import parse_candidates
    from moelight.bench.reference import GEMM_ONLY
    from moelight.bench.report import print_timing
    from moelight.bench.step import bench_step
    from moelight.recipe import load_recipe

    args = split_args(argv[1:], value_flags=STEP_FLAGS)
    f = args.flags
    _set_threads(f)
    recipe = load_recipe(args.recipe, args.overrides)
    spec = f.get("--dispatchers") or ",".join(_default_dispatchers())
    candidates = parse_candidates(spec)
    if any(c.name == GEMM_ONLY for c in candidates):
        raise MoelightError("'gemm-only' times expert GEMMs alone: use it with `moelight bench layer`")
    labels = [c.label for c in candidates]
    result = bench_step(
        recipe,
        candidates,
        _baseline(f, labels),
        repeats=_int(f, "--repeats", 10, minimum=1),
        warmup=_int(f, "--warmup", 2),
        device=f.get("--device", "auto"),
    )
    result["recipe"] = args.recipe
    return _finish(result, f, argv, print_timing)


def run_comm(argv: list[str]) -> int:
    # imported when the verb runs, not with the CLI: `moelight --help` stays fast
    from moelight.bench import comm
    from moelight.bench.candidates import split_list
    from moelight.bench.presets import get_preset, parse_dtype
    from moelight.bench.report import print_comm

    args = split_args(argv[1:], value_flags=COMM_FLAGS, positional=False)
    if args.overrides:
        raise MoelightError(f"`bench comm` takes no recipe overrides (got {' '.join(args.overrides)})")
    f = args.flags
    preset = get_preset(f.get("--preset", "llama-moe-3.5b"))
    top_k = _int(f, "--top-k", minimum=1)
    experts = _int(f, "--experts", minimum=1)
    if f.get("--profile") and f.get("--routing"):
        raise MoelightError("give either --profile or --routing, not both")
    if f.get("--profile"):
        source = comm.load_profile(f["--profile"], top_k or preset.top_k)
        if experts is not None and experts != source.num_experts:
            raise MoelightError(f"--experts {experts} but {f['--profile']} has {source.num_experts} experts")
    elif f.get("--routing"):
        source = comm.load_routing(f["--routing"], experts)
    else:
        e, k = experts or preset.experts, top_k or preset.top_k
        if k > e:
            raise MoelightError(f"--top-k ({k}) must be <= --experts ({e})")
        source = comm.RoutingSource("synthetic", None, e, k, preset.layers)
    has_layers = source.kind != "synthetic" and source.layers > 1
    setup = comm.Setup(
        tokens_per_device=_int(f, "--tokens", 16384, minimum=1),
        hidden=_int(f, "--hidden", preset.hidden, minimum=1),
        dtype_bytes=parse_dtype(f.get("--dtype", preset.dtype)).itemsize,
        layers=_int(f, "--layers", source.layers if has_layers else preset.layers, minimum=1),
        top_k=source.top_k,
        meta_bytes_per_expert=_int(f, "--meta-bytes", 8),
    )
    bandwidth, latency = _float(f, "--bandwidth-gbs"), _float(f, "--latency-us")
    if bandwidth is not None or latency is not None:
        if not bandwidth:
            raise MoelightError(
                "a custom interconnect needs --bandwidth-gbs > 0 (and optionally --latency-us)"
            )
        interconnects = [comm.Interconnect("custom", bandwidth, latency or 0.0, "given on the command line")]
    else:
        names = split_list(f.get("--interconnect", ",".join(comm.INTERCONNECTS)))
        unknown = [n for n in names if n not in comm.INTERCONNECTS]
        if unknown or not names:
            raise MoelightError(
                f"unknown interconnect {', '.join(unknown) or '(none)'}; allowed: {', '.join(comm.INTERCONNECTS)}"
            )
        interconnects = [comm.INTERCONNECTS[n] for n in names]
    try:
        devices = [int(p) for p in split_list(f.get("--devices", "2,4,8,16,32,64"))]
    except ValueError:
        raise MoelightError(f"--devices must be comma-separated integers, got {f['--devices']!r}") from None
    if not devices or min(devices) < 1:
        raise MoelightError(f"--devices: device counts must be at least 1, got {f.get('--devices')!r}")
    result = comm.project(
        source,
        setup,
        devices,
        interconnects,
        top_t=_int(f, "--top-t", minimum=1),
        samples=_int(f, "--samples", 200_000, minimum=1),
        seed=_int(f, "--seed", 0),
    )
    return _finish(result, f, argv, print_comm)


EP_FLAGS = (
    "--link",
    "--latency",
    "--procs",
    "--steps",
    "--warmup",
    "--threads",
    "--top-t",
    "--reference",
    "--burst",
    "--configs",
    "--json",
)


def run_ep(argv: list[str]) -> int:
    from pathlib import Path

    # imported when the verb runs, not with the CLI: `moelight --help` stays fast
    from moelight.bench import ep, link, netns
    from moelight.bench.candidates import split_list

    args = split_args(argv[1:], value_flags=EP_FLAGS)
    f = args.flags
    recipe = args.recipe or str(Path(ep.ROOT) / "recipes" / "ep-bench.yaml")
    procs = _int(f, "--procs", 2, minimum=2)
    if procs not in (2, 4, 8):
        raise MoelightError(f"--procs must be 2, 4 or 8, got {procs}")
    names = split_list(f.get("--link", "none"))
    custom = None
    links = []
    for name in names:
        if name in link.PRESETS or name == "none":
            links.append(name)
        else:
            custom = (link.parse_rate(name), link.parse_latency(f.get("--latency", "0ms")))
            links.append("custom")
    if f.get("--latency") and custom is None:
        raise MoelightError("--latency goes with a --link rate (e.g. --link 20mbit --latency 2ms)")
    reference = f.get("--reference", "llama-moe")
    if reference not in link.REFERENCES:
        raise MoelightError(f"--reference {reference!r}; allowed: {', '.join(link.REFERENCES)}")
    configs = tuple(split_list(f.get("--configs", ",".join(ep.CONFIG_KEYS))))
    unknown = [c for c in configs if c not in ep.CONFIG_KEYS]
    if unknown or not configs:
        raise MoelightError(
            f"--configs: unknown {', '.join(unknown) or '(none)'}; allowed: {', '.join(ep.CONFIG_KEYS)}"
        )
    shaped = any(n != "none" for n in links)
    if shaped and not netns.in_namespace():
        netns.require()
        return netns.run_in_namespace(["bench", *argv])
    overrides = ["dispatcher.name=grouplocal", f"parallel.expert_parallel={procs}", *args.overrides]
    a = ep.Args(
        recipe=recipe,
        overrides=overrides,
        procs=procs,
        steps=_int(f, "--steps", 8, minimum=1),
        warmup=_int(f, "--warmup", 2, minimum=1),
        threads=_int(f, "--threads", 1, minimum=1),
        links=links,
        custom=custom,
        reference=reference,
        top_t=_int(f, "--top-t", 1, minimum=1),
        configs=configs,
        burst=_int(f, "--burst", 2000, minimum=1),
        json_path=f.get("--json"),
    )
    result = ep.run(a)
    result["command"] = "moelight bench " + shlex.join(argv)
    ep.print_report(result)
    if a.json_path:
        from moelight.bench.report import write_json

        write_json(a.json_path, result)
        print(f"wrote {a.json_path}")
    return 0


SUBCOMMANDS = {"layer": run_layer, "step": run_step, "comm": run_comm, "ep": run_ep}


def run(argv: list[str]) -> int:
    # imported when the verb runs, not with the CLI: `moelight --help` stays fast
    from moelight.bench.comm import INTERCONNECTS
    from moelight.bench.ep_configs import CONFIG_KEYS
    from moelight.bench.link import PRESETS as LINKS
    from moelight.bench.presets import PRESETS

    if not argv or argv[0] in ("-h", "--help") or any(a in ("-h", "--help") for a in argv):
        print(
            HELP.format(
                presets=", ".join(PRESETS),
                interconnects=", ".join(INTERCONNECTS),
                links=", ".join(LINKS),
                configs=", ".join(CONFIG_KEYS),
            )
        )
        return 0
    if argv[0] not in SUBCOMMANDS:
        raise MoelightError(f"unknown bench {argv[0]!r}; allowed: {', '.join(SUBCOMMANDS)}")
    return SUBCOMMANDS[argv[0]](argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1:]))
