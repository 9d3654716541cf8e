"""Run lm-eval tasks on one loaded model: one `simple_evaluate` per few-shot setting, results merged."""

from __future__ import annotations

from typing import Any

from moelight.errors import MoelightError
from moelight.eval.tasks import TaskRun, check_local_data

# Per-task sections of lm-eval's results that are merged across few-shot groups.
MERGED_KEYS = (
    "results",
    "groups",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
)


def merge_results(into: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    if into is None:
        return new
    for key in MERGED_KEYS:
        if key in new:
            into.setdefault(key, {}).update(new[key])
    return into


def run_tasks(lm, runs: list[TaskRun], manager, limit: float | None = None) -> dict[str, Any]:
    """lm-eval's results dict for `runs` (its own format, as `lm-eval --output_path` writes it)."""
    from lm_eval import simple_evaluate

    for run in runs:
        check_local_data(manager, run)
    by_shots: dict[int | None, list[str]] = {}
    for run in runs:
        by_shots.setdefault(run.num_fewshot, []).append(run.name)
    merged: dict[str, Any] | None = None
    for shots, names in by_shots.items():
        try:
            result = simple_evaluate(
                model=lm,
                tasks=names,
                task_manager=manager,
                num_fewshot=shots,
                limit=limit,
                log_samples=False,
            )
        except (ConnectionError, FileNotFoundError) as exc:  # data a task YAML names is not here
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MoelightError(f"task data not available offline ({', '.join(names)}): {first}") from None
        merged = merge_results(merged, result)
    assert merged is not None
    return merged
