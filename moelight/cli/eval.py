"""`moelight eval CKPT [CKPT ...] --tasks t1,t2 ...`: lm-evaluation-harness on moelight checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from moelight.cli.args import split_args
from moelight.errors import MoelightError

HELP = """usage: moelight eval CKPT [CKPT ...] --tasks T1,T2 [--recipe R] [--include-path DIR]...
                     [--num-fewshot N] [--limit N] [--batch-size B] [--out DIR]
                     [--device auto|cpu|cuda] [--dtype auto|float32|bfloat16] [key.path=value ...]

Evaluate checkpoints with lm-evaluation-harness, each with the router it was trained with (a C2R
model is evaluated with C2R routing). Offline: nothing is downloaded.

  CKPT              a .ckpt from `moelight fit`, a sharded expert-parallel checkpoint directory,
                    or a `moelight convert import` directory; several: a side-by-side table with
                    each checkpoint's delta against the first and the average accuracy
  --tasks           lm-eval task or group names, comma-separated. Shipped (examples/eval-tasks):
                    moelight_python_mc, moelight_python_complete, moelight_stdlib_ppl, or
                    moelight_local for all three; `paper` = the C2R paper's ten benchmarks with
                    their few-shot settings (docs/evaluation.md; their data must be local)
  --recipe R        build the model from this recipe instead of the one the checkpoint carries
  --include-path D  more task YAMLs (e.g. local copies of hub tasks); repeatable
  --num-fewshot N   few-shot examples for every task (default: each task's own, `paper`'s own)
  --limit N         only the first N documents of each task (a fraction if < 1)
  --batch-size B    sequences per forward pass (default 16)
  --out DIR         write results.json (lm-eval's format; DIR/<label>/ for several checkpoints)
                    and results.md
  --labels A,B      names of the checkpoints in the tables (default: from their paths)
  --device/--dtype  default: the GPU in bf16 when there is one, else the CPU in fp32
  key.path=value    recipe overrides applied to every checkpoint
"""

VALUE_FLAGS = (
    "--tasks",
    "--recipe",
    "--include-path",
    "--num-fewshot",
    "--limit",
    "--batch-size",
    "--out",
    "--labels",
    "--device",
    "--dtype",
)

console = Console()


def _split(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(checkpoints, include paths, the rest for split_args): several positionals and a repeatable flag."""
    checkpoints: list[str] = []
    includes: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        takes_next = not eq and i + 1 < len(argv)
        if name == "--include-path":
            if not eq and not takes_next:
                raise MoelightError("--include-path needs a value")
            includes.append(inline if eq else argv[i + 1])
            i += 1 if eq else 2
        elif name in VALUE_FLAGS or (arg.startswith("--") and "." in name):
            rest += [arg] + ([argv[i + 1]] if takes_next else [])
            i += 2 if takes_next else 1
        elif arg.startswith("-") or eq:
            rest.append(arg)
            i += 1
        else:
            checkpoints.append(arg)
            i += 1
    return checkpoints, includes, rest


def _number(flags: dict, name: str, kind: type, minimum: float) -> float | int | None:
    raw = flags.get(name)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise MoelightError(f"{name} {raw!r}: expected a number") from None
    if value < minimum:
        raise MoelightError(f"{name} {raw!r}: must be >= {minimum}")
    return value


def _limit(flags: dict) -> float | int | None:
    value = _number(flags, "--limit", float, 0)
    if value is None:
        return None
    if value == 0:
        raise MoelightError("--limit must be > 0")
    return value if value < 1 else int(value)


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
    if any(a in ("-h", "--help") for a in argv):
        print(HELP)
        return 0
    checkpoints, includes, rest = _split(argv)
    args = split_args(rest, value_flags=VALUE_FLAGS, positional=False)
    if not checkpoints:
        raise MoelightError("moelight eval needs a checkpoint (see moelight eval --help)")
    flags = args.flags
    if not flags.get("--tasks"):
        raise MoelightError("moelight eval needs --tasks (e.g. --tasks moelight_local; see --help)")
    labels = default_labels(checkpoints)
    if flags.get("--labels"):
        labels = [s.strip() for s in str(flags["--labels"]).split(",")]
        if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
            raise MoelightError(f"--labels needs {len(checkpoints)} distinct names, one per checkpoint")
    for ckpt in checkpoints:
        if not Path(ckpt).exists():
            raise MoelightError(f"checkpoint not found: {ckpt}")

    from moelight.eval.tasks import go_offline, quiet_custom_dataset_warning

    go_offline()  # before lm-eval and datasets are imported
    try:
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

    shots = _number(flags, "--num-fewshot", int, 0)
    runs = parse_tasks(str(flags["--tasks"]), shots)
    manager = task_manager(runs, include_paths(includes))
    runs = expand_tags(manager, runs)
    batch = _number(flags, "--batch-size", int, 1)
    limit = _limit(flags)
    all_results = []
    for ckpt, label in zip(checkpoints, labels):
        loaded = load_eval_model(
            ckpt, flags.get("--recipe"), args.overrides, flags.get("--device"), flags.get("--dtype")
        )
        router = loaded.recipe.router.get("name")
        console.print(
            f"[bold]{escape(label)}[/]: {escape(ckpt)} — router {escape(str(router))}, "
            f"{loaded.device.type} {str(loaded.dtype).removeprefix('torch.')}"
        )
        lm = MoelightLM(model=loaded, batch_size=batch)
        results = run_tasks(lm, runs, manager, limit)
        results["config"]["model"] = "moelight"
        results["config"]["model_args"] = {"checkpoint": str(ckpt), "router": loaded.recipe.router}
        all_results.append(results)

    table = comparison(labels, all_results, runs)
    console.print(rich_table(table, "moelight eval" + (f" (limit {limit})" if limit else "")))
    out = flags.get("--out")
    if out:
        _write(Path(str(out)), labels, all_results, markdown(table))
        console.print(f"results: {escape(str(out))}/results.md and results.json")
    return 0


def _write(out: Path, labels: list[str], all_results: list[dict], table_md: str) -> None:
    from lm_eval.utils import handle_non_serializable

    out.mkdir(parents=True, exist_ok=True)
    for label, results in zip(labels, all_results):
        target = out if len(labels) == 1 else out / label.replace("/", "_")
        target.mkdir(parents=True, exist_ok=True)
        (target / "results.json").write_text(
            json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n"
        )
    (out / "results.md").write_text(table_md)
