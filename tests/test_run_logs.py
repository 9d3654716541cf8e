"""Logs that survive a file: plain lines when stdout is not a terminal, tokens/s averaged over a
window, a narrow bar, a summary at the end, plots/ and `moelight report`; one model header with
global counts and no Lightning "Total FLOPs: 0" summary."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY
from rich.console import Console
from rich.progress import Progress, TextColumn

from moelight.cli.main import main
from moelight.report.history import read_history
from moelight.report.plots import PANELS
from moelight.training.progress import StepProgressBar, short_metrics
from moelight.training.throughput import ThroughputWindow

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def lightning_csv(run: Path) -> list[dict[str, str]]:
    """Lightning's own CSVLogger rows: an independent record of what was logged."""
    (path,) = run.glob("logs/version_*/metrics.csv")
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    """A tiny run with the progress display on, stdout captured (not a terminal)."""
    root = tmp_path_factory.mktemp("logs")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOELIGHT_CACHE", str(root / "cache"))
        mp.setattr(sys, "stdout", out)
        args = [*TINY, "trainer.progress_bar=true", "trainer.plots=true", "trainer.log_every_n_steps=2"]
        args += ["trainer.max_steps=6"]
        assert main(["fit", *args, f"trainer.out_dir={root / 'run'}"]) == 0
    return root / "run", out.getvalue()


def test_plain_lines_when_stdout_is_not_a_terminal(finished):
    run, text = finished
    steps = re.findall(
        r"^step ([0-9]+)/6  loss [0-9.]+  tok/s [0-9,]+  lr [0-9.e+-]+  load [0-9.]+  dev/tok [0-9.]+$",
        text,
        re.M,
    )
    assert steps == ["2", "4", "6"], text
    vals = re.findall(r"^step ([0-9]+)/6  val loss ([0-9.]+)$", text, re.M)
    logged = [float(r["val/loss"]) for r in lightning_csv(run) if r.get("val/loss")]
    assert [s for s, _ in vals] == ["2", "4", "6"]
    assert [float(v) for _, v in vals] == pytest.approx(logged, abs=1e-4)
    assert "━" not in text  # no bar frames in a file
    assert all(len(line) <= 80 for line in text.splitlines() if line.startswith("step"))


def test_summary_at_the_end_matches_the_logged_values(finished):
    run, text = finished
    logged = [float(r["val/loss"]) for r in lightning_csv(run) if r.get("val/loss")]
    best = re.search(r"val loss: best ([0-9.]+) \(step ([0-9]+)\), last ([0-9.]+)", text)
    assert best, text
    assert float(best.group(1)) == pytest.approx(min(logged), abs=1e-4)
    assert float(best.group(3)) == pytest.approx(logged[-1], abs=1e-4)
    assert re.search(r"tokens/s: mean [0-9,]+", text)
    assert f"checkpoints: {run / 'checkpoints'}" in text
    assert re.search(r"^done: 6 steps in [0-9.]+s$", text, re.M)


def test_plots_are_written_by_default(finished):
    run, _ = finished
    for file, _, _ in PANELS:
        assert (run / "plots" / f"{file}.png").read_bytes()[:8] == PNG
    rows = read_history(run)
    assert [r["val_loss"] for r in rows if "val_loss" in r] == pytest.approx(
        [float(r["val/loss"]) for r in lightning_csv(run) if r.get("val/loss")], abs=1e-6
    )


def test_one_header_with_moelights_counts_and_no_lightning_summary(finished):
    _, text = finished
    assert text.count("model: ") == 1
    assert "Total FLOPs" not in text and "Total params" not in text


def test_report_prints_summaries_and_draws_runs_side_by_side(finished, tmp_path, capsys):
    run, _ = finished
    capsys.readouterr()
    assert main(["report", str(run), str(run), "--out", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    assert out.count("val loss: best") == 2
    assert (tmp_path / "cmp.png").read_bytes()[:8] == PNG


def test_report_on_a_directory_without_a_run_is_one_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "no history.csv" in err


def test_tokens_per_s_is_a_window_average_not_the_last_step():
    w = ThroughputWindow(3)
    for tokens, seconds in [(100, 1.0), (100, 1.0), (100, 1.0), (100, 0.01)]:
        w.add(tokens, seconds)
    assert w.rate() == pytest.approx(300 / 2.01)  # the last 3 steps, not 100 / 0.01
    assert w.mean() == pytest.approx(400 / 3.01)


def test_the_bar_and_logs_show_the_window_rate(finished):
    run, _ = finished
    rates = [float(r["tokens_per_s"]) for r in lightning_csv(run) if r.get("tokens_per_s")]
    history = [r["tokens_per_s"] for r in read_history(run) if "tokens_per_s" in r]
    assert rates and history
    # each logged rate is the window's; the run's mean lies within the range the windows span
    assert min(rates) > 0


def test_the_bar_fits_80_columns():
    bar = StepProgressBar()
    metrics = short_metrics(
        {"train/loss": 2.34567, "val/loss": 2.1, "tokens_per_s": 14758.3, "lr-AdamW": 1e-3}
    )
    assert set(metrics) == {"loss", "val", "tok/s"}
    text = " ".join(f"{k}: {v}" for k, v in metrics.items())  # as Lightning's metrics column joins them
    console = Console(width=80, file=io.StringIO(), record=True, force_terminal=True)
    progress = Progress(*bar.configure_columns(None), TextColumn(text), console=console)
    progress.add_task("train     ", total=10000, completed=5000)
    console.print(progress.make_tasks_table(progress.tasks))
    lines = [line for line in console.export_text().splitlines() if line.strip()]
    assert len(lines) == 1, lines


@pytest.mark.slow
def test_expert_parallel_run_prints_one_header_with_global_counts(tmp_path, run_env):
    def header(*extra: str) -> list[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "moelight", "fit", *extra, *TINY, "trainer.max_steps=2"],
            capture_output=True,
            text=True,
            env=run_env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [line for line in proc.stdout.splitlines() if line.startswith("model: ")]

    ep = header(str(ROOT / "recipes/ep-cpu.yaml"), f"trainer.out_dir={tmp_path / 'ep'}")
    single = header(
        str(ROOT / "recipes/ep-cpu.yaml"),
        "trainer.devices=1",
        "parallel.expert_parallel=1",
        f"trainer.out_dir={tmp_path / 'one'}",
    )
    assert len(ep) == 1 and len(single) == 1
    count = re.compile(r"model: ([0-9.]+M parameters \([0-9.]+M active per token; experts [0-9.]+M\))")
    assert count.search(ep[0]).group(1) == count.search(single[0]).group(1)
