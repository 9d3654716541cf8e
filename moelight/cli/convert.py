"""`moelight convert`: Hugging Face MoE checkpoints in and out (Qwen2-MoE, Mixtral, OLMoE)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from moelight.cli.args import split_args
from moelight.errors import MoelightError

USAGE = """usage:
  moelight convert import HF_DIR --out DIR [--dtype keep|float32|bfloat16|float16] [--force]
      read a local Hugging Face checkpoint directory (config.json + *.safetensors) and write
      DIR/model.safetensors (moelight names), DIR/recipe.yaml (model section, `topk` router with
      the HF routing, model.init_from: model.safetensors) and DIR/tokenizer/ when HF_DIR has one.
  moelight convert export CKPT_OR_DIR --out HF_DIR --arch ARCH [--recipe RECIPE] [--dtype ...] [--force]
                          [--router topk]
      write HF_DIR/config.json + HF_DIR/model.safetensors in the hub layout (one tensor per
      expert) from a converted directory, a .safetensors file (needs --recipe) or a Lightning .ckpt.
      A router ARCH cannot express (c2r, device_limited, a balancing bias...) stops the export:
      the HF model would route differently. --router topk exports it anyway with a plain top-k
      gate (same gate weights) and records the dropped router in config.json (moelight_export).

architectures: {archs}
Conversion reads and writes files only; loading the result in transformers needs `moelight[hf]`."""

SUBCOMMANDS = ("import", "export")


def _archs() -> str:
    from moelight.hf.common import architectures

    return ", ".join(architectures())


def _dtype(value: str | bool | None):
    from moelight.hf.common import DTYPES

    if value in (None, "keep"):
        return None
    if value not in DTYPES:
        raise MoelightError(f"--dtype {value!r}: allowed: keep, {', '.join(DTYPES)}")
    return DTYPES[value]


def _require(flags: dict, name: str, sub: str) -> str:
    value = flags.get(name)
    if not isinstance(value, str) or not value:
        raise MoelightError(f"convert {sub} needs {name} (see `moelight convert --help`)")
    return value


def run(argv: list[str]) -> int:
    console = Console()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(archs=_archs()))
        return 0
    sub, rest = argv[0], argv[1:]
    if sub not in SUBCOMMANDS:
        raise MoelightError(f"unknown convert command {sub!r}; allowed: {', '.join(SUBCOMMANDS)}")
    if any(a in ("-h", "--help") for a in rest):
        print(USAGE.format(archs=_archs()))
        return 0
    args = split_args(
        rest, value_flags=("--out", "--arch", "--recipe", "--dtype", "--router"), bool_flags=("--force",)
    )
    if args.overrides:
        raise MoelightError(f"convert {sub} takes no recipe overrides (got {' '.join(args.overrides)})")
    if args.recipe is None:
        what = "HF_DIR" if sub == "import" else "CKPT_OR_DIR"
        raise MoelightError(f"convert {sub} needs {what} (see `moelight convert --help`)")
    out = _require(args.flags, "--out", sub)
    dtype = _dtype(args.flags.get("--dtype"))
    force = bool(args.flags.get("--force"))

    if sub == "import":
        if "--arch" in args.flags or "--recipe" in args.flags or "--router" in args.flags:
            raise MoelightError(
                "convert import reads the architecture and router from config.json: drop --arch/--recipe/--router"
            )
        from moelight.hf.common import import_to_dir

        result = import_to_dir(args.recipe, out, dtype=dtype, force=force)
        m = result.imported.model
        n = sum(t.numel() for t in result.imported.state_dict.values())
        console.print(
            f"imported {escape(result.imported.arch.name)}: {m.n_layers} layers, hidden {m.hidden_size}, "
            f"{m.num_experts} experts (top-{m.top_k}), {n:,} parameters"
        )
        for note in result.imported.notes:
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
        console.print(f"  weights   {escape(str(result.weights_path))}")
        console.print(f"  recipe    {escape(str(result.recipe_path))}")
        if result.tokenizer is not None:
            console.print(f"  tokenizer {escape(str(result.tokenizer))}")
        console.print(
            f"next: moelight fit {escape(str(result.recipe_path))} data.source=... "
            "(or `extends:` it from your own recipe)"
        )
        return 0

    arch = _require(args.flags, "--arch", sub)
    from moelight.hf.common import export_from_checkpoint
    from moelight.hf.router_swap import as_topk, record_dropped

    swapped: list[tuple[dict, dict]] = []
    replace = None
    if "--router" in args.flags:
        if args.flags["--router"] != "topk":
            raise MoelightError(f"--router {args.flags['--router']!r}: allowed: topk")

        def replace(router: dict) -> dict:
            swapped.append((router, as_topk(router)))
            return swapped[-1][1]

    warnings = export_from_checkpoint(
        args.recipe, out, arch, args.flags.get("--recipe"), dtype=dtype, force=force, replace_router=replace
    )
    for original, exported in swapped:
        if original.get("name") != exported.get("name"):
            warnings.append(record_dropped(out, original, exported))
    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    console.print(f"exported {escape(arch)} to {escape(out)} (config.json, model.safetensors)")
    return 0
