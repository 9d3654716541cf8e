"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch.utilities.rank_zero import rank_zero_only

# The C2R paper's released routing statistics, shipped in the repository (data/c2r-paper/README.md).
C2R_PAPER_DATA = Path(__file__).resolve().parents[1] / "data" / "c2r-paper"


@pytest.fixture(autouse=True)
def rank_zero_restored():
    """Lightning keeps this process's rank in a global, `rank_zero_only.rank`, which building a
    multi-process Trainer sets (DDPStrategy.set_world_ranks) and a single-device Trainer never
    resets. A test that builds one for rank 1 in-process (test_lightning_cli's SLURM test) would
    silence every rank-zero-only call after it: later fits in the session log no CSV rows."""
    rank = rank_zero_only.rank
    yield
    rank_zero_only.rank = rank


@pytest.fixture(scope="session")
def c2r_data() -> Path:
    """The C2R paper's reference data (data/c2r-paper); missing data is a failure, not a skip."""
    path = C2R_PAPER_DATA
    assert path.is_dir(), f"C2R reference data not found at {path}"
    return path


# A model and data small enough that a few training steps take about a second on 2 CPU cores.
TINY = [
    "model.n_layers=2",
    "model.hidden_size=32",
    "model.n_heads=2",
    "model.ffn_hidden_size=64",
    "model.expert_ffn_hidden_size=32",
    "data.seq_len=32",
    "data.batch_size=4",
    "data.max_bytes=300000",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=2",
    "trainer.checkpoint_every_n_steps=2",
    "trainer.progress_bar=false",
    "trainer.plots=false",  # matplotlib at the end of every test run: tests/test_run_logs.py draws them
]


@pytest.fixture()
def run_env(tmp_path, monkeypatch) -> dict:
    """A private token cache and output dir; returns the environment for subprocesses too."""
    import os

    monkeypatch.setenv("MOELIGHT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return dict(os.environ)


@pytest.fixture()
def tiny(tmp_path, run_env) -> list[str]:
    """Overrides for a tiny run writing under tmp_path/run."""
    return TINY + [f"trainer.out_dir={tmp_path / 'run'}"]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """List the slow and GPU tests by outcome, so neither kind can hide in a green run."""
    for marker in ("slow", "gpu"):
        lines = []
        for outcome in ("passed", "failed", "skipped"):
            for rep in terminalreporter.stats.get(outcome, []):
                if marker in getattr(rep, "keywords", {}) and rep.when in ("call", "setup"):
                    if outcome == "passed" and rep.when != "call":
                        continue
                    lines.append(f"{outcome:8} {rep.duration:6.1f}s  {rep.nodeid}")
        if lines:
            terminalreporter.write_sep("-", f"{marker} tests ({len(lines)})")
            for line in lines:
                terminalreporter.write_line(line)
