"""`moelight report RUN_DIR [RUN_DIR ...] [--out FILE]`: the runs' summaries, and their curves
(loss, tokens/s, load balance, devices per token over steps) drawn side by side."""

from __future__ import annotations

from pathlib import Path

from moelight.cli.verb_parser import VerbParser
from moelight.errors import MoelightError
from moelight.report.history import HISTORY, read_history, read_summary

DESCRIPTION = """Summaries and curves of finished (or running) `moelight fit` runs.
Each RUN_DIR is a run's trainer.out_dir (it holds history.csv and summary.json). Prints each run's
summary (steps, best/last validation loss, mean tokens/s, wall time, checkpoints) and draws every
run's loss, tokens/s, max expert load over the mean and devices per token over steps, side by side."""


def parser() -> VerbParser:
    p = VerbParser("moelight report", DESCRIPTION)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (trainer.out_dir)")
    p.add_argument("--out", default="report.png", help="the figure to write (PNG, PDF or SVG)")
    return p


def run(argv: list[str]) -> int:
    args = parser().parse(argv)
    if args is None:
        return 0
    runs: dict[str, list[dict[str, float]]] = {}
    for run_dir in map(Path, args.runs):
        rows = read_history(run_dir)
        if not rows:
            raise MoelightError(
                f"{run_dir}: no {HISTORY} (not a moelight run directory, or a run from before its record)"
            )
        name = run_dir.name if run_dir.name not in runs else str(run_dir)
        runs[name] = rows
        summary = read_summary(run_dir)
        if summary is None:  # still running, or stopped before the end: what the history holds
            last = max(int(r["step"]) for r in rows)
            print(f"{name}: running or stopped, {last} steps recorded (no summary.json yet)")
        else:
            print("\n".join(summary.lines(name)))
    from moelight.report.plots import write_comparison

    print(f"curves: {write_comparison(runs, Path(args.out))}")
    return 0
