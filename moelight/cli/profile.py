"""`moelight profile CHECKPOINT --out DIR [--data PATH] [--max-tokens N] [--devices N,...]`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from jsonargparse.typing import PositiveInt
from rich.console import Console
from rich.table import Table

from moelight.cli.verb_parser import CommaList, VerbParser
from moelight.errors import MoelightError

DESCRIPTION = """Run a trained model over a corpus and write its collaboration profile to DIR:
  profile.safetensors  co-activation [L,E,E], load [L,E], collaborator lists [L,E,E],
                       concentration [L,E-1], specialization [L,E], routing histogram
  profile.json         metadata and summary metrics
  coactivation.png, concentration.png
Use DIR (or DIR/profile.safetensors) as `profile.path` of a c2r recipe.
Recipe overrides (key.path=value) change the checkpoint's recipe, e.g. data.batch_size=32."""

console = Console()


def parser() -> VerbParser:
    p = VerbParser("moelight profile", DESCRIPTION)
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="a moelight checkpoint (.ckpt written by `moelight fit`)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="where to write (created)")
    p.add_argument(
        "--data",
        metavar="PATH",
        help="profile on this text/jsonl file or directory instead of the recipe's validation data "
        "(it becomes data.source; its validation split is used)",
    )
    p.add_argument(
        "--max-tokens",
        type=PositiveInt | None,
        help="stop after N tokens (default: the whole validation split)",
    )
    p.add_argument(
        "--devices",
        type=CommaList(PositiveInt, what="device counts"),
        action="extend",
        default=[],
        help="also write DIR/placement-N.json: experts on N devices, equal groups, keeping as much "
        "co-activation inside a device as possible (repeatable, or 2,4)",
    )
    p.add_overrides()
    return p


def run(argv: list[str]) -> int:
    args = parser().parse(argv)
    if args is None:
        return 0
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise MoelightError(
            f"--out {args.out} is a file; moelight profile writes a directory of results there"
        )
    overrides = list(args.overrides)
    if args.data is not None:
        if not Path(args.data).exists():
            raise MoelightError(f"--data: {args.data} not found")
        overrides.append(f"data.source={Path(args.data).resolve()}")
    devices = list(dict.fromkeys(args.devices))
    return profile(
        args.checkpoint, args.out, max_tokens=args.max_tokens, devices=devices, overrides=overrides
    )


def profile(
    checkpoint: str,
    out: str,
    max_tokens: int | None = None,
    devices: list[int] | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
) -> int:
    """The `moelight profile` verb as a function (the benchmark calls it directly)."""
    # Imported when the verb runs, not with the CLI: `moelight --help` stays fast.
    from moelight.c2r.plots import coactivation_grid, concentration_plot
    from moelight.c2r.profiling import (
        concentration_curve,
        profile_model,
        save_profile,
        write_placements,
    )
    from moelight.data.datamodule import MoEDataModule
    from moelight.load import load_checkpoint

    say = (lambda *a, **k: None) if quiet else console.print
    loaded = load_checkpoint(checkpoint, overrides)
    recipe = loaded.recipe
    num_experts = recipe.model.num_experts
    for p in devices or []:
        if num_experts % p:
            raise MoelightError(f"--devices {p}: {num_experts} experts cannot be split into {p} equal groups")
    datamodule = MoEDataModule(recipe.data, seed=recipe.seed)
    datamodule.setup("validate")
    start = time.perf_counter()
    result = profile_model(loaded.model, datamodule.val_dataloader(), max_tokens=max_tokens)
    wall = time.perf_counter() - start
    layers = recipe.model.moe_layers
    meta = {
        "checkpoint": str(checkpoint),
        "data": {"source": recipe.data.source, "split": "validation", "seq_len": recipe.data.seq_len},
        "max_tokens": max_tokens,
        "moe_layers": layers,
        "router": recipe.router,
        "recipe": recipe.model_dump(mode="json"),
    }
    out_dir = save_profile(result, out, meta)
    stats = write_placements(out_dir, devices or []) if devices else {}
    names = [f"MoE layer {j} (block {b})" for j, b in enumerate(layers)]
    coactivation_grid(
        result.coactivation,
        out_dir / "coactivation.png",
        title=f"co-activation shares — {Path(checkpoint).name}, {result.tokens:,} tokens",
        layer_names=names,
    )
    curve = concentration_curve(result.coactivation)
    concentration_plot(
        {"mean over layers": curve.mean(0)},
        out_dir / "concentration.png",
        title=f"collaboration concentration — {Path(checkpoint).name}",
        per_layer=curve,
    )
    if not quiet:
        _report(result, stats, out_dir, wall)
    say(f"[bold green]profile written[/]: {out_dir} (profile.path={out_dir})")
    return 0


def _report(result, stats: dict, out_dir: Path, wall: float) -> None:
    s = result.summary()
    loss = f", LM loss {result.loss:.4f}" if result.loss is not None else ""
    console.print(
        f"[bold]profiled[/] {result.tokens:,} tokens through {result.num_layers} MoE layers "
        f"({result.num_experts} experts, top-{result.top_k}) in {wall:.1f}s{loss}"
    )
    table = Table(title="collaboration per MoE layer")
    for col in ("layer", "load CV", "top-1 share", "top-3 share", "specialization"):
        table.add_column(col, justify="right")
    conc = s["concentration_per_layer"]
    for j in range(result.num_layers):
        top3 = conc[j][2] if len(conc[j]) > 2 else conc[j][-1]
        table.add_row(
            str(j),
            f"{s['load_cv_per_layer'][j]:.3f}",
            f"{conc[j][0]:.3f}",
            f"{top3:.3f}",
            f"{s['specialization_per_layer'][j]:.3f}",
        )
    console.print(table)
    for p, entry in stats.items():
        console.print(
            f"placement on {p} devices -> {out_dir / entry['file']}: co-activation kept on one device "
            f"{entry['kept_share']:.3f} (contiguous {entry['contiguous_kept_share']:.3f}); "
            f"devices per token {entry['devices_per_token']:.3f} (contiguous "
            f"{entry['contiguous_devices_per_token']:.3f})"
        )


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
