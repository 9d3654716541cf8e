"""`moelight profile CHECKPOINT --out DIR [--data PATH] [--max-tokens N | --docs N --tokens-per-doc L]
[--devices N,...]`."""

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
As the C2R paper profiled (200 LongBench contexts x their first 1024 tokens):
  moelight profile CKPT --out DIR --data long_docs.jsonl --docs 200 --tokens-per-doc 1024
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
        "(it becomes data.source; its validation split is used, or with --docs its long documents)",
    )
    p.add_argument(
        "--max-tokens",
        type=PositiveInt | None,
        help="stop after N tokens (default: the whole validation split)",
    )
    p.add_argument(
        "--docs",
        type=PositiveInt | None,
        help="profile N documents of the corpus (--data, else the recipe's data.source) instead of "
        "its validation split: N sampled (seeded by the recipe's seed) among those with at least "
        "--tokens-per-doc tokens, one row each",
    )
    p.add_argument(
        "--tokens-per-doc",
        type=PositiveInt | None,
        metavar="L",
        help="with --docs: the first L tokens of each document (the paper: 1024)",
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
        if args.docs is not None:
            # A corpus of documents, whatever the checkpoint trained on (an SFT model's recipe says
            # instruct); a later data.format=... override still wins.
            overrides.insert(0, "data.format=auto")
    if (args.docs is None) != (args.tokens_per_doc is None):
        raise MoelightError("--docs and --tokens-per-doc go together: N documents x their first L tokens")
    if args.docs is not None and args.max_tokens is not None:
        raise MoelightError("--max-tokens and --docs both set the tokens to profile: give one")
    documents = None if args.docs is None else (args.docs, args.tokens_per_doc)
    devices = list(dict.fromkeys(args.devices))
    return profile(
        args.checkpoint,
        args.out,
        max_tokens=args.max_tokens,
        devices=devices,
        overrides=overrides,
        documents=documents,
    )


def profile(
    checkpoint: str,
    out: str,
    max_tokens: int | None = None,
    devices: list[int] | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
    documents: tuple[int, int] | None = None,
) -> int:
    """The `moelight profile` verb as a function (the benchmark calls it directly).
    `documents=(N, L)`: the first L tokens of N long documents instead of the validation split."""
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
    data_meta: dict = {"source": recipe.data.source, "split": "validation", "seq_len": recipe.data.seq_len}
    if documents is None:
        datamodule = MoEDataModule(recipe.data, seed=recipe.seed)
        datamodule.setup("validate")
        batches = datamodule.val_dataloader()
    else:
        batches = _document_batches(recipe, *documents)
        data_meta = {"source": recipe.data.source, "docs": documents[0], "tokens_per_doc": documents[1]}
    start = time.perf_counter()
    result = profile_model(loaded.model, batches, max_tokens=max_tokens)
    wall = time.perf_counter() - start
    layers = recipe.model.moe_layers
    meta = {
        "checkpoint": str(checkpoint),
        "data": data_meta,
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


def _document_batches(recipe, docs: int, tokens_per_doc: int) -> list:
    """Rows of the first `tokens_per_doc` tokens of `docs` long documents, in batches of
    data.batch_size, each with its next-token targets (the last position has none)."""
    import torch

    from moelight.data.long_documents import long_document_rows
    from moelight.data.tokenizer import load_tokenizer

    rows = long_document_rows(
        recipe.data, load_tokenizer(recipe.data.tokenizer), docs, tokens_per_doc, recipe.seed
    )
    targets = torch.cat([rows[:, 1:], torch.full_like(rows[:, :1], -100)], dim=1)
    size = recipe.data.batch_size
    return [(rows[i : i + size], targets[i : i + size]) for i in range(0, len(rows), size)]


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
