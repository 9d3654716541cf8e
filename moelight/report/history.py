"""A run's history: one row per logged step (`<out_dir>/history.csv`) and its summary
(`<out_dir>/summary.json`), written by the trainer and read by `moelight report`."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

HISTORY = "history.csv"
SUMMARY = "summary.json"
COLUMNS = ("step", "loss", "tokens_per_s", "lr", "max_load", "devices_per_token", "val_loss")


@dataclass
class Summary:
    steps: int
    best_val_loss: float | None
    best_val_step: int | None
    last_val_loss: float | None
    mean_tokens_per_s: float | None
    wall_s: float
    checkpoints: str

    def lines(self, name: str = "") -> list[str]:
        def num(x: float | None, fmt: str) -> str:
            return "n/a" if x is None else format(x, fmt)

        best = f"{num(self.best_val_loss, '.4f')}" + (
            f" (step {self.best_val_step})" if self.best_val_step is not None else ""
        )
        return [
            f"{name or 'run'}: {self.steps} steps in {self.wall_s:.1f}s",
            f"  val loss: best {best}, last {num(self.last_val_loss, '.4f')}",
            f"  tokens/s: mean {num(self.mean_tokens_per_s, ',.0f')}",
            f"  checkpoints: {self.checkpoints}",
        ]


def write_history(out_dir: Path, rows: list[dict[str, float]]) -> None:
    path = Path(out_dir) / HISTORY
    tmp = path.with_name(f".{HISTORY}.partial")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
    tmp.replace(path)


def read_history(out_dir: Path) -> list[dict[str, float]]:
    path = Path(out_dir) / HISTORY
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            row = {k: float(v) for k, v in raw.items() if k in COLUMNS and v not in ("", None)}
            if "step" in row and all(math.isfinite(v) for v in row.values()):
                rows.append(row)
    return rows


def write_summary(out_dir: Path, summary: Summary) -> None:
    (Path(out_dir) / SUMMARY).write_text(json.dumps(asdict(summary), indent=2) + "\n")


def read_summary(out_dir: Path) -> Summary | None:
    try:
        return Summary(**json.loads((Path(out_dir) / SUMMARY).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def summarize(
    rows: list[dict[str, float]], steps: int, mean_tps: float | None, wall_s: float, ckpts: str
) -> Summary:
    vals = [(r["val_loss"], int(r["step"])) for r in rows if "val_loss" in r]
    best = min(vals) if vals else (None, None)
    return Summary(
        steps=steps,
        best_val_loss=best[0],
        best_val_step=best[1],
        last_val_loss=vals[-1][0] if vals else None,
        mean_tokens_per_s=mean_tps,
        wall_s=wall_s,
        checkpoints=ckpts,
    )
