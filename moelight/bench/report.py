"""Printing benchmark results as rich tables and writing them as JSON, with the machine they ran on."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from moelight.errors import MoelightError


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """What a benchmark number needs next to it to mean anything."""
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device) if device is not None else None,
        "gpu": None,
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def write_json(path: str, result: dict[str, Any]) -> None:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(result, indent=1) + "\n")
    except OSError as exc:
        raise MoelightError(f"cannot write {path}: {exc}") from None


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def timing_table(result: dict[str, Any], title: str) -> Table:
    """Candidates with median, IQR, min-max, tokens/s and speedup over the baseline (paired)."""
    table = Table(title=title, title_justify="left")
    table.add_column("candidate")
    table.add_column("median ms", justify="right")
    table.add_column("IQR ms (q1-q3)", justify="right")
    table.add_column("min-max ms", justify="right")
    table.add_column("tokens/s", justify="right")
    table.add_column(f"speedup vs {result['baseline']}\nmedian [q1, q3]", justify="right")
    has_err = any(r.get("max_rel_err") is not None for r in result["results"])
    if has_err:
        table.add_column(f"max rel err\nvs {result.get('reference')}", justify="right")
    for r in result["results"]:
        row = [
            r["name"],
            _ms(r["median_ms"]),
            f"{_ms(r['iqr_ms'])} ({_ms(r['q1_ms'])}-{_ms(r['q3_ms'])})",
            f"{_ms(r['min_ms'])}-{_ms(r['max_ms'])}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['speedup']:.2f}x [{r['speedup_q1']:.2f}, {r['speedup_q3']:.2f}]",
        ]
        if has_err:
            err = r.get("max_rel_err")
            row.append("-" if err is None else f"{err:.1e}")
        table.add_row(*row)
    return table


def print_timing(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    env = result["env"]
    where = (
        env["gpu"]
        if result["device"].startswith("cuda")
        else f"{env['cpu']} ({env['torch_threads']} threads)"
    )
    if result["kind"] == "layer":
        s = result["shape"]
        title = (
            f"MoE layer fwd+bwd: {s['tokens']} tokens, hidden {s['hidden']}, {s['experts']} experts "
            f"of ffn {s['ffn']}, top-{s['top_k']}, {s['dtype']}, router {result['router']}"
        )
    else:
        m = result["model"]
        title = (
            f"training step: {m['n_layers']} layers, hidden {m['hidden_size']}, {m['num_experts']} experts "
            f"of ffn {m['expert_ffn_hidden_size']}, top-{m['top_k']}, batch {result['batch_size']}x"
            f"{result['seq_len']}, {result['precision']}"
        )
    title += f"\n{where}, torch {env['torch']}, {result['repeats']} interleaved repeats after {result['warmup']} warm-up"
    console.print(timing_table(result, title))


def print_comm(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(f"[bold]all2all projection[/] — {result['source']['description']}")
    console.print("[bold]assumptions[/]:")
    for line in result["assumptions"]:
        console.print(f"  - {line}", highlight=False)
    scenarios = result["scenarios"]
    ps = [p for p in result["devices"] if p not in result["skipped"] or _any_rows(scenarios, p)]

    rows = Table(
        title="rows per token crossing into the all2all (distinct devices per token)", title_justify="left"
    )
    rows.add_column("P", justify="right")
    for s in scenarios:
        rows.add_column(s["label"], justify="right")
    for p in ps:
        rows.add_row(str(p), *[_fmt(s["rows"].get(p), "{:.3f}") for s in scenarios])
    console.print(rows)
    console.print("how each column was obtained:")
    for s in scenarios:
        console.print(f"  - {s['label']}: {s['method']}", highlight=False)

    for ic, per in result["time_ms_per_step"].items():
        t = Table(
            title=f"projected all2all time per training step, ms ({ic}); change vs per-expert",
            title_justify="left",
        )
        t.add_column("P", justify="right")
        for s in scenarios:
            t.add_column(s["label"], justify="right")
        for p in ps:
            base = per["per-expert"].get(p)
            cells = []
            for s in scenarios:
                v = per[s["key"]].get(p)
                if v is None:
                    cells.append("-")
                elif s["key"] == "per-expert" or not base:
                    cells.append(f"{v:.2f}")
                else:
                    cells.append(f"{v:.2f} ({(v / base - 1) * 100:+.1f}%)")
            t.add_row(str(p), *cells)
        console.print(t)
    for p, why in sorted(result["skipped"].items()):
        console.print(f"  P = {p}: {why}", highlight=False)
    g = result["goal"]
    k, req = g["top_k"], g["required_reduction"]
    c2r = g["c2r_rows_per_token"]
    ok = "[green]met[/]"
    no = "[red]NOT met[/]"
    console.print(
        "[bold]goal[/]: with C2R placement, rows per token = 1 (vs k) and all2all time falls by >= (k-1)/k"
    )
    if not c2r:
        console.print(f"  no P here lets a device hold k = {k} experts, so C2R placement was not evaluated")
        return
    console.print(
        f"  rows per token: C2R placement {min(c2r.values()):.3f}-{max(c2r.values()):.3f} vs per-expert {k}: "
        f"{ok if g['rows_goal_met'] else no}"
    )
    payload = g["row_bytes_reduction"]
    console.print(
        f"  row payload (rows x hidden): -{min(payload.values()) * 100:.2f}% (required -{req * 100:.2f}%): "
        f"{ok if g['payload_goal_met'] else no}"
    )
    wire = g["wire_bytes_reduction"]
    console.print(
        f"  bytes on the wire incl. grouplocal metadata: -{min(wire.values()) * 100:.2f}% "
        f"(required -{req * 100:.2f}%): {ok if min(wire.values()) >= req - 1e-12 else no}"
    )
    console.print(
        f"  projected time, incl. latency and grouplocal metadata: at least -{g['min_time_reduction'] * 100:.2f}% "
        f"over all P and interconnects (required -{req * 100:.2f}%): {ok if g['time_goal_met'] else no}"
    )


def _any_rows(scenarios: list[dict], p: int) -> bool:
    return any(s["rows"].get(p) is not None for s in scenarios)


def _fmt(v: float | None, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def markdown(result: dict[str, Any]) -> str:
    """The result as Markdown tables (for docs/benchmarks.md), with the machine and command."""
    env = result["env"]
    where = env["gpu"] if str(result.get("device", "")).startswith("cuda") else env["cpu"]
    head = [f"`{result['command']}`", "", f"{where}, torch {env['torch']}, {env['date']}", ""]
    if result["kind"] == "comm":
        return "\n".join(head + _comm_markdown(result))
    lines = [
        f"| candidate | median ms | IQR ms (q1-q3) | min-max ms | tokens/s | speedup vs {result['baseline']} [q1, q3] |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['name']} | {_ms(r['median_ms'])} | {_ms(r['iqr_ms'])} ({_ms(r['q1_ms'])}-{_ms(r['q3_ms'])}) "
            f"| {_ms(r['min_ms'])}-{_ms(r['max_ms'])} | {r['tokens_per_s']:,.0f} "
            f"| {r['speedup']:.2f}x [{r['speedup_q1']:.2f}, {r['speedup_q3']:.2f}] |"
        )
    return "\n".join(head + lines)


def _comm_markdown(result: dict[str, Any]) -> list[str]:
    scenarios = result["scenarios"]
    ps = [
        str(p) for p in result["devices"] if any(s["rows"].get(str(p), s["rows"].get(p)) for s in scenarios)
    ]

    def cell(d: dict, p: str):
        return d.get(p, d.get(int(p)))

    lines = ["rows per token:", "", "| P | " + " | ".join(s["label"] for s in scenarios) + " |"]
    lines.append("| ---: |" + " ---: |" * len(scenarios))
    for p in ps:
        lines.append(f"| {p} | " + " | ".join(_fmt(cell(s["rows"], p), "{:.3f}") for s in scenarios) + " |")
    for ic, per in result["time_ms_per_step"].items():
        lines += ["", f"projected all2all ms per step, {ic} (change vs per-expert):", ""]
        lines.append("| P | " + " | ".join(s["label"] for s in scenarios) + " |")
        lines.append("| ---: |" + " ---: |" * len(scenarios))
        for p in ps:
            base = cell(per["per-expert"], p)
            cells = []
            for s in scenarios:
                v = cell(per[s["key"]], p)
                if v is None:
                    cells.append("-")
                elif s["key"] == "per-expert":
                    cells.append(f"{v:.1f}")
                else:
                    cells.append(f"{v:.1f} ({(v / base - 1) * 100:+.1f}%)")
            lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return lines
