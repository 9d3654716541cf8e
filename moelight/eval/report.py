"""Results tables: one headline number per task, side by side across checkpoints, with deltas.

Accuracy-like metrics (higher is better) are shown in percent and averaged: the C2R paper states
its result as an average accuracy over its benchmarks (arXiv 2504.01337), and the per-task percent
columns follow LLaMA-MoE's README results table (pjlab-sys4nlp/llama-moe); perplexity-like metrics (lower is better) are shown as they are and left out of the
average, which would otherwise mix scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table as RichTable

from moelight.eval.tasks import TaskRun

# The headline metric when a task run names none: the first of these the task reports.
PREFERRED = ("acc", "exact_match", "bits_per_byte")
SKIP = {"alias", "name", "sample_len", " "}


@dataclass(frozen=True)
class Cell:
    metric: str
    value: float
    higher_is_better: bool

    @property
    def shown(self) -> float:
        return self.value * 100 if self.higher_is_better else self.value


def _metrics(results: dict[str, Any], task: str) -> dict[str, float]:
    out = {}
    for key, value in results["results"].get(task, {}).items():
        metric = key.split(",")[0]
        if metric in SKIP or metric.endswith("_stderr") or not isinstance(value, int | float):
            continue
        out.setdefault(metric, float(value))
    return out


def headline(results: dict[str, Any], run: TaskRun) -> Cell | None:
    """The number reported for `run` (None when the task produced none)."""
    metrics = _metrics(results, run.name)
    if not metrics:
        return None
    if run.metric in metrics:
        metric = run.metric
    else:
        metric = next((m for m in PREFERRED if m in metrics), next(iter(metrics)))
    better = results.get("higher_is_better", {}).get(run.name, {}).get(metric, True)
    return Cell(metric, metrics[metric], bool(better))


def average(cells: list[Cell | None]) -> float | None:
    values = [c.shown for c in cells if c is not None and c.higher_is_better]
    return sum(values) / len(values) if values else None


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _delta(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None else f"{b - a:+.2f}"


def comparison(labels: list[str], all_results: list[dict[str, Any]], runs: list[TaskRun]) -> Table:
    """Task rows × checkpoint columns, then Δ of each later checkpoint against the first."""
    header = ["task", "shots", "metric", *labels] + [f"Δ {label}" for label in labels[1:]]
    rows = []
    columns: list[list[Cell | None]] = [[headline(r, run) for run in runs] for r in all_results]
    for i, run in enumerate(runs):
        cells = [col[i] for col in columns]
        first = next((c for c in cells if c is not None), None)
        metric = "—" if first is None else first.metric + ("" if first.higher_is_better else " ↓")
        shots = all_results[0].get("n-shot", {}).get(run.name, run.num_fewshot)
        values = [None if c is None else c.shown for c in cells]
        rows.append(
            [run.name, "—" if shots is None else str(shots), metric]
            + [_fmt(v) for v in values]
            + [_delta(values[0], v) for v in values[1:]]
        )
    averages = [average(col) for col in columns]
    if any(a is not None for a in averages):
        rows.append(
            ["average (accuracy, %)", "", ""]
            + [_fmt(a) for a in averages]
            + [_delta(averages[0], a) for a in averages[1:]]
        )
    return Table(header, rows)


def markdown(table: Table) -> str:
    align = ["---"] * 3 + ["---:"] * (len(table.header) - 3)
    lines = ["| " + " | ".join(table.header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def rich_table(table: Table, title: str):
    out = RichTable(title=title)
    for i, name in enumerate(table.header):
        out.add_column(name, justify="left" if i < 3 else "right")
    for row in table.rows:
        out.add_row(*row)
    return out
