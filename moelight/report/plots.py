"""Curves of one or more runs over steps: loss (train and validation), tokens/s, load balance
(max expert load over the mean) and devices per token, side by side (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

PANELS = (
    ("loss", "loss", "loss (train; validation dashed)"),
    ("tokens_per_s", "tokens_per_s", "tokens/s (windowed)"),
    ("load_balance", "max_load", "max expert load / mean"),
    ("devices_per_token", "devices_per_token", "devices per token"),
)


def _series(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def _draw(ax, runs: dict[str, list[dict[str, float]]], key: str, title: str) -> None:
    for name, rows in runs.items():
        (line,) = ax.plot(*_series(rows, key), label=name)
        if key == "loss":
            ax.plot(*_series(rows, "val_loss"), "--o", color=line.get_color(), markersize=3)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


def _figure(cols: int):
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt, plt.subplots(1, cols, figsize=(4.2 * cols, 3.4), squeeze=False)


def write_run_plots(rows: list[dict[str, float]], out: Path, name: str = "run") -> list[Path]:
    """One PNG per panel under `out` (a run's `plots/`)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for file, key, title in PANELS:
        plt, (fig, axes) = _figure(1)
        _draw(axes[0][0], {name: rows}, key, title)
        fig.tight_layout()
        path = out / f"{file}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_comparison(runs: dict[str, list[dict[str, float]]], path: Path) -> Path:
    """Every panel side by side, one line per run."""
    plt, (fig, axes) = _figure(len(PANELS))
    for ax, (_, key, title) in zip(axes[0], PANELS):
        _draw(ax, runs, key, title)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
