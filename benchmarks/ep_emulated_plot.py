"""Plot and tabulate `moelight bench ep --json` results: step time split into compute and exposed
all2all per configuration, one panel per (P, link); and the Markdown tables for docs/benchmarks.md.

    python benchmarks/ep_emulated_plot.py docs/ep-emulated/ep-p2.json docs/ep-emulated/ep-p4.json \
        --png docs/ep-emulated.png --md docs/ep-emulated/tables.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moelight.plots import plt, save_figure


def load(paths: list[str]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


def plot(results: list[dict], out: str) -> None:
    panels = [(r, name) for r in results for name in r["links"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (r, name) in zip(axes[0], panels):
        rows = r["links"][name]["rows"]
        labels = [row["config"].replace(" / ", "\n") for row in rows]
        compute = [row["compute_ms"] / 1e3 for row in rows]
        comm = [row["all2all_ms"] / 1e3 for row in rows]
        x = range(len(rows))
        ax.bar(x, compute, color="#4c72b0", label="compute (incl. waiting for slower ranks)")
        ax.bar(x, comm, bottom=compute, color="#dd8452", label="exposed all2all")
        for i, row in enumerate(rows):
            ax.text(i, compute[i] + comm[i], f"{row['speedup']:.2f}x", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"P = {r['procs']}, {name}", fontsize=10)
        ax.set_ylabel("median step time (s)")
    axes[0][-1].legend(fontsize=7, loc="lower right", framealpha=0.9)
    fig.suptitle(
        "moelight bench ep: emulated interconnect (speed-up vs top-k per-expert above bars)", fontsize=10
    )
    save_figure(fig, out)


def tables(results: list[dict]) -> str:
    lines = []
    for r in results:
        for name, table in r["links"].items():
            lines += [
                f"**P = {r['procs']}, link `{name}`** — {table['description']}",
                "",
                "| config | rows/token | remote rows/token | bytes/token | devices/token | step ms (median) "
                "| IQR ms | all2all ms (exposed) | share | predicted ms | predicted/measured "
                "| bytes measured/counted | speed-up vs per-expert [q1, q3] | step time change |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for row in table["rows"]:
                s = row["step"]
                pred = "-" if row["predicted_ms"] is None else f"{row['predicted_ms']:.0f}"
                ratio = (
                    "-" if row["predicted_over_measured"] is None else f"{row['predicted_over_measured']:.2f}"
                )
                b = row["measured_bytes_per_rank_step"] / row["counted_bytes_per_rank_step"]
                lines.append(
                    f"| {row['config']} | {row['rows_per_token']:.3f} | {row['remote_rows_per_token']:.3f} "
                    f"| {row['bytes_per_token']:.0f} | {row['devices_per_token']:.3f} | {s['median_ms']:.0f} "
                    f"| {s['iqr_ms']:.0f} | {row['all2all_ms']:.0f} | {row['all2all_share']:.0%} | {pred} "
                    f"| {ratio} | {b:.4f} | {row['speedup']:.2f}x [{row['speedup_q1']:.2f}, "
                    f"{row['speedup_q3']:.2f}] | {row['step_time_change']:+.0%} |"
                )
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", nargs="+")
    parser.add_argument("--png", default="docs/ep-emulated.png")
    parser.add_argument("--md", default=None)
    args = parser.parse_args(argv)
    results = load(args.json)
    plot(results, args.png)
    md = tables(results)
    if args.md:
        Path(args.md).write_text(md)
    print(md)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main(sys.argv[1:])
