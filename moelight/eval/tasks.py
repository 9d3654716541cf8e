"""Which lm-eval tasks to run: names, the `paper` suite, include paths, and whether their data is local.

Everything runs offline (`HF_DATASETS_OFFLINE`/`HF_HUB_OFFLINE`): a task whose data is neither in
local files nor in the local datasets cache stops the run with the files it needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moelight.errors import MoelightError

# The project's own tasks (examples/eval-tasks in a checkout of the repository).
LOCAL_TASK_DIR = Path(__file__).resolve().parents[2] / "examples" / "eval-tasks"
LOCAL_TAG = "moelight_local"
OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}


def go_offline() -> None:
    """Before lm-eval or datasets is imported: never reach a hub (datasets reads these at import)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def quiet_custom_dataset_warning() -> None:
    """lm-eval warns on every task with a `custom_dataset` loader, which all shipped tasks have."""
    import logging

    logging.getLogger("lm_eval.api.task").addFilter(lambda r: "Custom kwargs" not in r.getMessage())


@dataclass(frozen=True)
class TaskRun:
    """One lm-eval task or group with its few-shot count (None: the task's own default)."""

    name: str
    num_fewshot: int | None
    metric: str | None = None  # the number reported for it (None: the task's first metric)


def include_paths(extra: list[str]) -> list[str]:
    paths = [str(LOCAL_TASK_DIR)] if LOCAL_TASK_DIR.is_dir() else []
    for p in extra:
        if not Path(p).is_dir():
            raise MoelightError(f"--include-path {p}: not a directory of task YAML files")
        paths.append(str(Path(p).resolve()))
    return paths


def parse_tasks(spec: str, num_fewshot: int | None) -> list[TaskRun]:
    """`t1,t2,paper,...`: task names, with `paper` standing for the paper's suite (its own shots)."""
    from moelight.eval.paper import PAPER_SUITE

    names = [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise MoelightError("--tasks needs at least one task name (e.g. --tasks moelight_local)")
    runs: list[TaskRun] = []
    for name in names:
        if name == "paper":
            runs += [
                TaskRun(t.task, t.num_fewshot if num_fewshot is None else num_fewshot, t.metric)
                for t in PAPER_SUITE
            ]
        else:
            runs.append(TaskRun(name, num_fewshot))
    return runs


def task_manager(runs: list[TaskRun], paths: list[str]):
    """lm-eval's TaskManager over `paths`, plus lm-eval's own tasks only when a run needs one
    (indexing lm-eval's ~15k task files takes tens of seconds)."""
    from lm_eval.tasks import TaskManager

    local = TaskManager(include_path=paths or None, include_defaults=False)
    if all(run.name in local.all_tasks for run in runs):
        return local
    full = TaskManager(include_path=paths or None)
    unknown = [run.name for run in runs if run.name not in full.all_tasks]
    if unknown:
        raise MoelightError(
            f"unknown task(s): {', '.join(unknown)}; local tasks: {', '.join(local.all_tasks) or 'none'} "
            "(lm-eval's own tasks: `lm-eval ls tasks`; your own: --include-path DIR)"
        )
    return full


def expand_tags(manager, runs: list[TaskRun]) -> list[TaskRun]:
    """A tag (e.g. `moelight_local`) stands for its tasks: one row each in the results."""
    out: list[TaskRun] = []
    for run in runs:
        if run.name in manager.all_tags:
            members = sorted(n for n, e in manager.task_index.items() if run.name in e.tags)
            out += [TaskRun(m, run.num_fewshot, run.metric) for m in members]
        else:
            out.append(run)
    return list(dict.fromkeys(out))


def _data_files(kwargs: dict[str, Any]) -> list[str]:
    files = kwargs.get("data_files")
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    return list(files or [])


def _needed_splits(cfg: dict[str, Any]) -> str:
    splits = [cfg.get(k) for k in ("test_split", "validation_split", "training_split", "fewshot_split")]
    return ", ".join(dict.fromkeys(s for s in splits if isinstance(s, str))) or "its splits"


def check_local_data(manager, run: TaskRun) -> None:
    """Refuse a task whose data is not on this machine, naming what it needs."""
    entry = manager.task_index.get(run.name)
    cfg = (entry.cfg if entry is not None else None) or {}
    if "custom_dataset" in cfg or "dataset_path" not in cfg:
        return  # a Python loader, or a group/tag: its tasks are loaded (and checked) by lm-eval
    path = str(cfg["dataset_path"])
    if path in LOCAL_BUILDERS:
        missing = [f for f in _data_files(cfg.get("dataset_kwargs") or {}) if not Path(f).exists()]
        if missing:
            raise MoelightError(f"task {run.name}: its data files are missing: {', '.join(missing)}")
        return
    if Path(path).exists():
        return
    try:
        import datasets

        datasets.load_dataset_builder(path, cfg.get("dataset_name"))
    except Exception:  # offline datasets raises several types for "not cached"
        name = f" (config {cfg['dataset_name']})" if cfg.get("dataset_name") else ""
        raise MoelightError(
            f"task {run.name} reads the Hugging Face dataset {path}{name} ({_needed_splits(cfg)}), "
            "which is not on this machine: put it in the local datasets cache (HF_DATASETS_CACHE) where "
            "a network is allowed, or give a task YAML with dataset_path: json and data_files pointing "
            "at local copies (--include-path DIR; see docs/evaluation.md)"
        ) from None
