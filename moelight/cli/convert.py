"""`moelight convert`: Hugging Face MoE checkpoints in and out (Qwen2-MoE, Mixtral, OLMoE)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.markup import escape

from moelight.cli.verb_parser import VerbParser
from moelight.hf.architectures import architectures
from moelight.hf.convert_dirs import export_from_checkpoint, import_to_dir
from moelight.hf.router_swap import as_topk, record_dropped
from moelight.model.init_from import DTYPES

IMPORT = """Read a local Hugging Face checkpoint directory (config.json + *.safetensors) and write
DIR/model.safetensors (moelight names), DIR/recipe.yaml (model section, `topk` router with the HF
routing, model.init_from: model.safetensors) and DIR/tokenizer/ when HF_DIR has one. The
architecture and router come from config.json."""
EXPORT = """Write HF_DIR/config.json + HF_DIR/model.safetensors in the hub layout (one tensor per expert)
from a converted directory, a .safetensors file (needs --recipe) or a Lightning .ckpt, and the
tokenizer (a byte-level model's as tokenizer.json, so AutoTokenizer loads it). An architecture
that cannot hold the model is refused with every blocker and the recipe change removing it.
A router ARCH cannot express (c2r, device_limited, a balancing bias...) stops the export: the HF
model would route differently. --router topk exports it anyway with a plain top-k gate (same gate
weights) and records the dropped router in config.json (moelight_export)."""
DTYPE = Literal[("keep", *DTYPES)]


def parser() -> VerbParser:
    archs = ", ".join(architectures())
    p = VerbParser(
        "moelight convert",
        f"Hugging Face MoE checkpoints in and out. Architectures: {archs}.\n"
        "Conversion reads and writes files only; loading the result in transformers needs `moelight[hf]`.",
    )
    imp = p.subcommand(
        "import", "a Hugging Face checkpoint directory into moelight weights and recipe", IMPORT
    )
    imp.add_argument("hf_dir", metavar="HF_DIR", help="a local Hugging Face checkpoint directory")
    exp = p.subcommand("export", "a moelight checkpoint into a Hugging Face directory", EXPORT)
    exp.add_argument("checkpoint", metavar="CKPT_OR_DIR", help="a converted directory, .safetensors or .ckpt")
    exp.add_argument("--arch", required=True, metavar="ARCH", help=f"the Hugging Face architecture: {archs}")
    exp.add_argument("--recipe", help="the recipe of a bare .safetensors file")
    exp.add_argument(
        "--router",
        type=Literal["topk"] | None,
        help="export a router ARCH cannot express as a plain top-k gate (recorded in config.json)",
    )
    for sub in (imp, exp):
        sub.add_argument("--out", required=True, metavar="DIR", help="the directory to write")
        sub.add_argument("--dtype", type=DTYPE, default="keep", help="weights' dtype (keep: as stored)")
        sub.add_argument("--force", action="store_true", help="overwrite DIR's files")
    return p


def run(argv: list[str]) -> int:
    args = parser().parse(argv)
    if args is None:
        return 0
    a = args[args.command]
    dtype = DTYPES.get(a.dtype)
    console = Console()
    if args.command == "import":
        result = import_to_dir(a.hf_dir, a.out, dtype=dtype, force=a.force)
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

    swapped: list[tuple[dict, dict]] = []
    replace = None
    if a.router == "topk":

        def replace(router: dict) -> dict:
            swapped.append((router, as_topk(router)))
            return swapped[-1][1]

    warnings = export_from_checkpoint(
        a.checkpoint, a.out, a.arch, a.recipe, dtype=dtype, force=a.force, replace_router=replace
    )
    for original, exported in swapped:
        if original.get("name") != exported.get("name"):
            warnings.append(record_dropped(a.out, original, exported))
    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    written = ", ".join(sorted(p.name for p in Path(a.out).iterdir() if p.is_file()))
    console.print(f"exported {escape(a.arch)} to {escape(a.out)} ({escape(written)})")
    return 0
