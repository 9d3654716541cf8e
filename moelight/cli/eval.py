"""`moelight eval CKPT [CKPT ...] --tasks t1,t2 ...`: lm-evaluation-harness on moelight checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from rich.console import Console
from rich.markup import escape

from moelight.cli.verb_parser import CommaList, VerbParser
from moelight.errors import MoelightError

DESCRIPTION = """Evaluate checkpoints with lm-evaluation-harness, each with the router it was trained with (a C2R
model is evaluated with C2R routing). Offline: nothing is downloaded. Several checkpoints: a
side-by-side table with each checkpoint's delta against the first and the average accuracy.
Recipe overrides (key.path=value) apply to every checkpoint."""
TASKS = """lm-eval task or group names, comma-separated. Shipped (examples/eval-tasks):
moelight_python_mc, moelight_python_complete, moelight_stdlib_ppl, or moelight_local for all
three; `paper` = the C2R paper's ten benchmarks with their few-shot settings
(docs/evaluation.md; their data must be local)"""

console = Console()


def parser() -> VerbParser:
    p = VerbParser("moelight eval", DESCRIPTION)
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CKPT",
        help="a .ckpt from `moelight fit`, a sharded expert-parallel checkpoint directory, "
        "or a `moelight convert import` directory",
    )
    p.add_argument("--tasks", required=True, help=TASKS)
    p.add_argument(
        "--recipe", help="build the model from this recipe instead of the one the checkpoint carries"
    )
    p.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="more task YAMLs (e.g. local copies of hub tasks); repeatable",
    )
    p.add_argument(
        "--num-fewshot",
        type=NonNegativeInt | None,
        help="few-shot examples for every task (default: each task's own, `paper`'s own)",
    )
    p.add_argument(
        "--limit",
        type=PositiveFloat | None,
        help="only the first N documents of each task (a fraction if < 1)",
    )
    p.add_argument("--batch-size", type=PositiveInt | None, help="sequences per forward pass (default 16)")
    p.add_argument(
        "--max-length",
        type=PositiveInt | None,
        help="the scoring window in tokens; longer inputs are cut on the left (default: the model's "
        "context length, model.max_position_embeddings, which `convert import` records; for a "
        "moelight-trained model its data.seq_len)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write results.json (lm-eval's format; DIR/<label>/ for several checkpoints) and results.md",
    )
    p.add_argument(
        "--labels",
        type=CommaList(what="names"),
        help="names of the checkpoints in the tables (default: from their paths)",
    )
    p.add_argument("--device", help="auto, cpu, cuda (default: the GPU when there is one, else the CPU)")
    p.add_argument("--dtype", help="auto, float32, bfloat16 (default: bf16 on a GPU, else fp32)")
    p.add_overrides()
    return p


def default_labels(checkpoints: list[str]) -> list[str]:
    """What tells the checkpoints' paths apart: `runs/topk/checkpoints/last.ckpt` and
    `runs/c2r/checkpoints/last.ckpt` are `topk` and `c2r`."""
    parts = [list(Path(c).with_suffix("").parts) for c in checkpoints]
    if len(parts) == 1:
        return [str(Path(checkpoints[0]).with_suffix(""))]
    while all(len(p) > 1 for p in parts) and len({p[-1] for p in parts}) == 1:
        parts = [p[:-1] for p in parts]
    while all(len(p) > 1 for p in parts) and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    labels = ["/".join(p) for p in parts]
    if len(set(labels)) != len(labels):
        return [f"{i}:{Path(c).stem}" for i, c in enumerate(checkpoints)]
    return labels


def run(argv: list[str]) -> int:
    args = parser().parse(argv)
    if args is None:
        return 0
    checkpoints = args.checkpoints
    labels = default_labels(checkpoints)
    if args.labels:
        labels = args.labels
        if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
            raise MoelightError(f"--labels needs {len(checkpoints)} distinct names, one per checkpoint")
    for ckpt in checkpoints:
        if not Path(ckpt).exists():
            raise MoelightError(f"checkpoint not found: {ckpt}")

    # imported when the verb runs, not with the CLI: `moelight --help` stays fast
    from moelight.eval.tasks import go_offline, quiet_custom_dataset_warning

    go_offline()  # before lm-eval and datasets are imported
    try:
        # optional dependency (moelight[eval])
        import lm_eval  # noqa: F401
    except ImportError:
        raise MoelightError(
            "moelight eval needs lm-evaluation-harness: pip install 'moelight[eval]'"
        ) from None
    quiet_custom_dataset_warning()
    from moelight.eval.adapter import MoelightLM
    from moelight.eval.model import load_eval_model
    from moelight.eval.report import comparison, markdown, rich_table
    from moelight.eval.runner import run_tasks
    from moelight.eval.tasks import expand_tags, include_paths, parse_tasks, task_manager

    runs = parse_tasks(args.tasks, args.num_fewshot)
    manager = task_manager(runs, include_paths(args.include_path))
    runs = expand_tags(manager, runs)
    limit = args.limit if args.limit is None or args.limit < 1 else int(args.limit)
    all_results = []
    for ckpt, label in zip(checkpoints, labels):
        loaded = load_eval_model(ckpt, args.recipe, args.overrides, args.device, args.dtype)
        router = loaded.recipe.router.get("name")
        console.print(
            f"[bold]{escape(label)}[/]: {escape(ckpt)} — router {escape(str(router))}, "
            f"{loaded.device.type} {str(loaded.dtype).removeprefix('torch.')}"
        )
        lm = MoelightLM(model=loaded, batch_size=args.batch_size, max_length=args.max_length)
        console.print(
            f"  window: {lm.max_length} tokens" + ("" if args.max_length else " (the model's context length)")
        )
        results = run_tasks(lm, runs, manager, limit)
        results["config"]["model"] = "moelight"
        results["config"]["model_args"] = {"checkpoint": str(ckpt), "router": loaded.recipe.router}
        all_results.append(results)

    table = comparison(labels, all_results, runs)
    console.print(rich_table(table, "moelight eval" + (f" (limit {limit})" if limit else "")))
    if args.out:
        _write(Path(args.out), labels, all_results, markdown(table))
        console.print(f"results: {escape(args.out)}/results.md and results.json")
    return 0


def _write(out: Path, labels: list[str], all_results: list[dict], table_md: str) -> None:
    # optional dependency (moelight[eval])
    from lm_eval.utils import handle_non_serializable

    out.mkdir(parents=True, exist_ok=True)
    for label, results in zip(labels, all_results):
        target = out if len(labels) == 1 else out / label.replace("/", "_")
        target.mkdir(parents=True, exist_ok=True)
        (target / "results.json").write_text(
            json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n"
        )
    (out / "results.md").write_text(table_md)
