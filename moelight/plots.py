"""Plots of collaboration profiles (matplotlib, Agg backend: files only, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless machines and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from moelight.collaboration import off_diagonal  # noqa: E402

# Curves that coincide (e.g. top-k and C2R with T = E-1) stay visible with distinct dashes/markers.
_STYLES = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ("-", "v"), ("--", "x"), ("-.", "P")]


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write as PNG and free the figure (pyplot keeps every open figure alive)."""
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _row_shares(counts: torch.Tensor) -> torch.Tensor:
    c = off_diagonal(counts)
    return c / c.sum(-1, keepdim=True).clamp(min=1e-300)


def coactivation_grid(
    counts: torch.Tensor,
    path: str | Path,
    title: str = "expert co-activation",
    layer_names: Sequence[str] | None = None,
    max_layers: int = 32,
) -> Path:
    """One heatmap per MoE layer: cell (i, j) = share of expert i's co-activations that are with j.

    Rows sum to 1, so layers and models with different token counts compare on one colour scale;
    the brightest cell of a row is that expert's top collaborator.
    """
    shares = _row_shares(counts)
    if shares.dim() == 2:
        shares = shares.unsqueeze(0)
    shares = shares[:max_layers]
    n, e = shares.shape[0], shares.shape[-1]
    names = list(layer_names) if layer_names is not None else [f"MoE layer {i}" for i in range(n)]
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    size = 2.6 if e <= 16 else 3.2
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 1.2, size * rows + 0.9), squeeze=False)
    vmax = max(float(shares.max()), 1e-9)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        cells = shares[i].clone()
        cells.fill_diagonal_(float("nan"))  # an expert never collaborates with itself: grey
        image = ax.imshow(cells.numpy(), cmap=cmap, vmin=0.0, vmax=vmax)
        ax.set_title(names[i], fontsize=9)
        ticks = list(range(e)) if e <= 16 else list(range(0, e, max(1, e // 8)))
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel("expert i", fontsize=8)
        if i + cols >= n:  # the lowest heatmap of its column
            ax.set_xlabel("collaborator j", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    if image is not None:
        cax = fig.add_axes((0.92, 0.15, 0.02, 0.7))
        fig.colorbar(image, cax=cax, label="share of expert i's co-activations")
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def concentration_plot(
    curves: Mapping[str, torch.Tensor | Sequence[float]],
    path: str | Path,
    title: str = "collaboration concentration",
    per_layer: torch.Tensor | None = None,
) -> Path:
    """Share of co-activations held by the top-T collaborators, against T, one line per curve.

    `curves`: label -> [E-1] values (T = 1..E-1). `per_layer` [L, E-1] adds faint per-layer lines
    (for a single profile). A dashed line marks uniform collaboration (T / (E-1)).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    e1 = None
    if per_layer is not None:
        for row in torch.as_tensor(per_layer):
            e1 = len(row)
            ax.plot(range(1, e1 + 1), row.tolist(), color="tab:blue", alpha=0.18, linewidth=1)
    for n, (label, curve) in enumerate(curves.items()):
        values = [float(v) for v in curve]
        e1 = len(values)
        dash, marker = _STYLES[n % len(_STYLES)]
        ax.plot(range(1, e1 + 1), values, linestyle=dash, marker=marker, linewidth=2, label=label)
    if e1:
        ax.plot(
            range(1, e1 + 1),
            [t / e1 for t in range(1, e1 + 1)],
            linestyle="--",
            color="grey",
            label="uniform collaboration",
        )
        ax.set_xticks(range(1, e1 + 1))
    ax.set_xlabel("T (top-T collaborators)")
    ax.set_ylabel("share of an expert's co-activations")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    return save_figure(fig, path)


def bar_plot(
    values: Mapping[str, Mapping[str, float]],
    path: str | Path,
    ylabel: str,
    title: str,
    fmt: str = "%.3g",
    zoom: bool = False,
) -> Path:
    """Grouped bars: `values[group][series]` (e.g. run -> {"contiguous": x, "optimised": y}).

    `zoom` starts the axis near the smallest value, for small differences (the title says so).
    """
    groups = list(values)
    series = list(dict.fromkeys(s for g in groups for s in values[g]))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.2 * len(groups) + 2), 4.2))
    for k, name in enumerate(series):
        xs = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ys = [values[grp].get(name, float("nan")) for grp in groups]
        bars = ax.bar(xs, ys, width=width, label=name)
        ax.bar_label(bars, fmt=fmt, fontsize=7)
    everything = [v for g in groups for v in values[g].values() if v == v]
    low, high = (min(everything), max(everything)) if everything else (0.0, 1.0)
    if zoom:
        span = max(high - low, 1e-9)
        ax.set_ylim(low - 0.6 * span, high + 0.35 * span)
        title += " (axis zoomed)"
    else:
        ax.set_ylim(0, high * 1.2)  # headroom for the value labels and the legend
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, ncol=min(len(series), 4), loc="upper center")
    return save_figure(fig, path)


def line_plot(
    lines: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """Curves `label -> (xs, ys)`, e.g. training loss against step."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for n, (label, (xs, ys)) in enumerate(lines.items()):
        ax.plot(list(xs), list(ys), label=label, linewidth=1.6, linestyle=_STYLES[n % len(_STYLES)][0])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
