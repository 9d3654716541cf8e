"""docs/frontier.md and its plots from benchmarks/frontier.py's results.json.

python benchmarks/frontier_report.py runs/frontier/results.json   # re-render without training
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOPK = "top-k"
GOAL_DEVICES = 1.25  # devices per token on 4 devices the issue asks a C2R router to reach
# Everything after this line in docs/frontier.md is hand-written and kept when the page is rewritten.
NOTES_MARKER = "<!-- notes below are written by hand and kept when the benchmark rewrites this page -->"
MARKERS = {
    "top-k": "o",
    "C2R": "s",
    "C2R placement": "D",
    "load-aware C2R": "P",
    "device-limited": "^",
}


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points no other point beats on both devices per token and val loss (lower is better)."""
    front, best = [], math.inf
    for x, y, name in sorted(points):
        if y < best:
            front.append((x, y, name))
            best = y
    return front


def times_spread(delta: float, top_spread: float) -> str:
    return f"{delta / top_spread:.1f}× the spread" if top_spread else "one seed: no spread to compare with"


def spread(arm: dict[str, Any]) -> float:
    losses = [r["val_loss"] for r in arm["per_seed"].values()]
    return max(losses) - min(losses)


def points(record: dict[str, Any], p: int) -> list[tuple[float, float, str]]:
    return [
        (a["dev_per_token"][str(p)], a["mean"]["val_loss"], name)
        for name, a in record["arms"].items()
        if a["dev_per_token"][str(p)] is not None
    ]


def plot(record: dict[str, Any], p: int, path: Path) -> None:
    from moelight.c2r.plots import plt, save_figure

    arms = record["arms"]
    top = arms[TOPK]
    band = spread(top)
    fig, ax = plt.subplots(figsize=(7.6, 5.0))
    ax.axhspan(
        top["mean"]["val_loss"],
        top["mean"]["val_loss"] + band,
        color="0.88",
        label=f"within top-k's seed spread ({band:.4f} nats) above its mean",
    )
    seen = set()
    for x, y, name in points(record, p):
        a = arms[name]
        losses = [r["val_loss"] for r in a["per_seed"].values()]
        family = a["family"]
        ax.errorbar(
            x,
            y,
            yerr=[[y - min(losses)], [max(losses) - y]],
            fmt=MARKERS.get(family, "o"),
            color=f"C{list(MARKERS).index(family) if family in MARKERS else 0}",
            capsize=3,
            label=None if family in seen else family,
        )
        seen.add(family)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = pareto(points(record, p))
    ax.plot([f[0] for f in front], [f[1] for f in front], "k--", linewidth=1, label="Pareto frontier")
    if p == 4:
        ax.axvline(
            GOAL_DEVICES, color="C3", linestyle=":", linewidth=1, label=f"goal: ≤ {GOAL_DEVICES} devices"
        )
    ax.set_xlabel(f"distinct devices per token, P = {p} (mean over layers and validation tokens)")
    ax.set_ylabel("validation loss (nats/token, mean of seeds; bars: min–max)")
    ax.set_title(f"quality vs communication, {p} devices")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    save_figure(fig, path)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def table(record: dict[str, Any]) -> str:
    rows = [
        "| arm | router | val loss | Δ vs top-k per seed | mean Δ | seed spread | load CV "
        "| dev/token P=2 | dev/token P=4 | counted under |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    b = record["base"]
    rows.append(
        f"| base (top-k, before continuing) | topk | {b['val_loss']:.4f} | — | — | — | {b['load_cv']:.3f} "
        f"| {b['dev_p2_own']:.3f} | {b['dev_p4_own']:.3f} | own placement |"
    )
    where = {"own": "own placement", "base": "base placement", "contiguous": "contiguous blocks"}
    for name, a in record["arms"].items():
        router = ", ".join(f"{k}={v}" for k, v in a["router"].items())
        deltas = ", ".join(f"{d:+.4f}" for d in a["delta_vs_topk"].values())
        mean_delta = "(reference)" if name == TOPK else f"{a['mean_delta']:+.4f}"
        rows.append(
            f"| {name} | {router} | {a['mean']['val_loss']:.4f} | {deltas if name != TOPK else '—'} "
            f"| {mean_delta} | {spread(a):.4f} | {a['mean']['load_cv']:.3f} "
            f"| {_fmt(a['dev_per_token']['2'])} | {_fmt(a['dev_per_token']['4'])} | {where[a['placement']]} |"
        )
    return "\n".join(rows)


def worse_seeds(a: dict[str, Any]) -> int:
    return sum(d > 0 for d in a["delta_vs_topk"].values())


def goal(record: dict[str, Any]) -> str:
    arms, band = record["arms"], spread(record["arms"][TOPK])
    lines = []
    for name, a in arms.items():
        if "C2R" not in a["family"] or a["dev_per_token"]["4"] is None:
            continue
        dev, delta = a["dev_per_token"]["4"], a["mean_delta"]
        ok_dev, ok_loss = dev <= GOAL_DEVICES, delta <= band
        verdict = "**meets the goal**" if ok_dev and ok_loss else "misses"
        why = []
        if not ok_dev:
            why.append(f"devices per token {dev:.3f} > {GOAL_DEVICES} by {dev - GOAL_DEVICES:.3f}")
        if not ok_loss:
            why.append(f"mean Δ {delta:+.4f} exceeds top-k's seed spread {band:.4f} by {delta - band:.4f}")
        lines.append(
            f"- {name}: {verdict} (dev/token P=4 {dev:.3f}, mean Δ {delta:+.4f} nats, worse than top-k on "
            f"{worse_seeds(a)} of {len(a['delta_vs_topk'])} seeds)" + (f" — {'; '.join(why)}" if why else "")
        )
    return "\n".join(lines)


def recommend(record: dict[str, Any], p: int) -> str:
    arms, band = record["arms"], spread(record["arms"][TOPK])
    usable = {n: a for n, a in arms.items() if a["dev_per_token"][str(p)] is not None}

    def dev(n: str) -> float:
        return usable[n]["dev_per_token"][str(p)]

    beats = [n for n, a in usable.items() if n != TOPK and worse_seeds(a) == 0 and a["mean_delta"] < 0]
    fast = min(beats, key=lambda n: usable[n]["mean"]["val_loss"]) if beats else TOPK
    free = [n for n, a in usable.items() if a["mean_delta"] <= band]
    mid = min(free, key=lambda n: (round(dev(n), 3), usable[n]["mean"]["val_loss"]))
    slow = min(usable, key=lambda n: (round(dev(n), 3), usable[n]["mean"]["val_loss"]))

    def desc(n: str) -> str:
        a = usable[n]
        return (
            f"**{n}** (val loss {a['mean']['val_loss']:.4f}, Δ {a['mean_delta']:+.4f} vs top-k, "
            f"{dev(n):.3f} devices per token, load CV {a['mean']['load_cv']:.3f})"
        )

    why_fast = "it beats top-k on every seed" if beats else "no arm beats it on every seed"
    return "\n".join(
        [
            f"- **Fast interconnect** (NVLink inside one node; all2all nearly free): {desc(fast)}: {why_fast}.",
            f"- **Mid-range** (InfiniBand between nodes; all2all costs but does not dominate): the fewest devices "
            f"per token among the arms within top-k's seed spread ({band:.4f} nats): {desc(mid)}.",
            f"- **Slow interconnect** (Ethernet; all2all dominates the step): the fewest devices per token: "
            f"{desc(slow)}; its quality cost is its Δ.",
        ]
    )


def write_report(record: dict[str, Any], docs: Path) -> Path:
    docs.mkdir(parents=True, exist_ok=True)
    for p in (2, 4):
        plot(record, p, docs / f"frontier-p{p}.png")
    fronts = {
        p: " → ".join(f"{n} ({x:.3f}, {y:.4f})" for x, y, n in pareto(points(record, p))) for p in (4, 2)
    }
    top_spread = spread(record["arms"][TOPK])
    deltas = sorted(abs(a["mean_delta"]) for n, a in record["arms"].items() if n != TOPK)
    median_delta = deltas[len(deltas) // 2] if deltas else float("nan")
    seeds = ", ".join(str(s) for s in record["seeds"])
    base_s = record["base"].get("seconds", math.nan)
    reused_runs = sum(
        r.get("seconds", 0) != r.get("seconds", 0)
        for a in record["arms"].values()
        for r in a["per_seed"].values()
    )
    reused = (
        f"; reused from earlier invocations (`--reuse`) and not counted: "
        f"{'the base model and its profile' if base_s != base_s else ''}"
        f"{', ' if base_s != base_s and reused_runs else ''}{f'{reused_runs} continued runs' if reused_runs else ''}"
        if base_s != base_s or reused_runs
        else f", of which the base {base_s / 60:.1f} min"
    )
    text = f"""# The quality–communication frontier of moelight's routers

Reproduce (writes this page, `docs/frontier-p2.png`, `docs/frontier-p4.png`; runs in `runs/frontier`):

```bash
{record["command"].replace(" --reuse", "").strip()}
```

## Setup

- **Model** (`{record["recipe"]}`): 2 layers, hidden 64, every FFN an MoE of **16 experts, top-2**
  (expert width 64), byte vocabulary, sequences of 128, batches of 16; the embedded corpus with a
  **5% validation split ({record.get("validation_split_tokens", record["validation_tokens"]):,} tokens)**; every
  model is measured on its first **{record["validation_tokens"]:,} tokens** (the same tokens for all).
- **Base**: top-k for {record["base_steps"]} steps, then `moelight profile --devices 2,4` over the whole
  validation split (collaborator lists, collaboration-aware placements on 2 and 4 devices).
- **Arms**: each continues from the base checkpoint for {record["steps"]} steps (lr {record["lr"]:g}, 10 warm-up
  steps, cosine to 10%), changing only the router, with data-order seeds {seeds}; for one seed all arms
  see the same batches, so each arm is compared with top-k **per seed** (paired Δ).
  - *C2R T*: the base profile's collaborator lists, top-1 plus the best of its first T collaborators.
  - *C2R placement P*: candidates = the other experts on the top-1 expert's device under the base
    model's placement on P devices (T = 16/P − 1), so a token visits exactly one device.
  - *load-aware C2R*: the same rule plus the auxiliary-loss-free expert bias (rate 1e-3), which shifts
    which experts are selected but not their weights.
  - *device-limited M/P*: DeepSeek-V3 group-limited routing (group score = sum of the best 2 scores),
    groups = P blocks of consecutive expert ids (= the contiguous placement's devices), at most M
    groups per token.
  All runs are single-process: placement-bound C2R uses collaborator lists that follow the
  placement (`moelight/c2r/placement_collaborators.py`; identical routing to `collaborators: placement`,
  `tests/test_placement_collaborators.py`).
- **Measured** on the whole validation split after training (the profiler): **val loss** = mean
  next-token loss; **load CV** = std/mean of tokens per expert (mean over layers);
  **dev/token** = expected distinct devices holding a token's 2 experts, exact over the validation
  tokens' routings, under the placement the arm trained with (C2R placement: the base placement;
  device-limited: the contiguous blocks) or, for arms free of any placement, under the
  collaboration-aware placement computed from the arm's own final profile. "—": the arm is bound
  to the other device count.
- **Not measured**: step time under an emulated interconnect. `moelight bench ep`'s InfiniBand-like
  preset is being built on another branch and is not in this one, so no step-time column or plot.

## Results

{table(record)}

Top-k's own seed spread (max − min of its {len(record["seeds"])} seeds): **{top_spread:.4f} nats**; the median
|mean Δ| of the other arms is {median_delta:.4f} nats ({times_spread(median_delta, top_spread)}).

**How this recipe was chosen.** The C2R report's quickstart model has 8 experts (2 per device on 4
devices, too few for device limits or placement candidates to differ) and its top-k seed spread
(0.0075 nats, 2 seeds, 150 steps) was as large as the C2R effects it measured. Here: 16 experts, so
4 devices hold 4 each and P = 2 and P = 4 constrain differently; top-2 as in the C2R paper and that
report; a base trained {record["base_steps"]} steps so its routing and collaborator lists have settled; a
continuation that decays to 10% of its peak learning rate, so the last batches (the part that
differs between seeds) move the model little; 3 seeds instead of 2; and a model (2 layers,
hidden 64) small enough that the 33 continued runs fit the time budget on 2 shared CPU cores.

![frontier on 4 devices](frontier-p4.png)

![frontier on 2 devices](frontier-p2.png)

**Pareto frontier** (devices per token, val loss), fewest devices first:
- 4 devices: {fronts[4]}
- 2 devices: {fronts[2]}

## Goal: a C2R router within top-k's seed spread at ≤ {GOAL_DEVICES} devices per token on 4 devices

"Within the spread" = mean paired Δ vs top-k ≤ top-k's seed spread ({top_spread:.4f} nats).

{goal(record)}

## Which router for which interconnect

Chosen from the table by rule (the measured step time under an emulated interconnect, which would
weigh devices per token against quality directly, is not in this branch):

On 4 devices:
{recommend(record, 4)}

On 2 devices:
{recommend(record, 2)}

Wall time: {record["wall_s"] / 60:.1f} min ({record["cpu"]}){reused}.

{NOTES_MARKER}
"""
    out = docs / "frontier.md"
    if out.is_file() and NOTES_MARKER in out.read_text():
        text += out.read_text().split(NOTES_MARKER, 1)[1].lstrip("\n")
    out.write_text(text)
    return out


if __name__ == "__main__":
    results = json.loads(Path(sys.argv[1]).read_text())
    print(write_report(results, Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs"))
