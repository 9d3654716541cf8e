"""Datasets of the project's local lm-eval tasks, read from this directory or built at run time.

lm-eval calls these through `custom_dataset: !function moelight_tasks.<name>` in the task YAMLs
beside this file, so the tasks run from any working directory and never touch a hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

HERE = Path(__file__).resolve().parent
# The embedded corpus's default split (moelight's data.val_fraction) and a cap per document that
# keeps the task a few seconds long on a CPU.
VAL_FRACTION = 0.02
MAX_DOC_BYTES = 8192


def _splits(file: str) -> datasets.DatasetDict:
    rows = [json.loads(line) for line in (HERE / file).read_text().splitlines() if line.strip()]
    by_split: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_split.setdefault(row.pop("split"), []).append(row)
    return datasets.DatasetDict({name: datasets.Dataset.from_list(r) for name, r in by_split.items()})


def python_mc(**_: Any) -> datasets.DatasetDict:
    return _splits("python_mc.jsonl")


def python_complete(**_: Any) -> datasets.DatasetDict:
    return _splits("python_complete.jsonl")


def stdlib_validation(**_: Any) -> datasets.DatasetDict:
    """The embedded corpus's validation documents (this interpreter's standard library)."""
    from moelight.data.corpus import is_validation, resolve_source
    from moelight.recipe import DataConfig

    docs = [d for d in resolve_source(DataConfig()).documents() if is_validation(d.key, VAL_FRACTION)]
    rows = [{"key": d.key, "text": d.read()[:MAX_DOC_BYTES].decode("utf-8", errors="ignore")} for d in docs]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
