"""Guarantee: a run killed (SIGKILL) at ANY moment, checkpointing every step, resumed with
`--resume last` until done, ends with exactly the weights and optimizer state of an uninterrupted
run; and nothing is ever staged in $TMPDIR (no orphan temp files after a kill)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TRIALS = int(os.environ.get("MOELIGHT_FAULT_TRIALS", "30"))
STEPS = 4


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path, run_env):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    out = tmp_path / "result.json"
    env = {**run_env, "TMPDIR": str(tmpdir)}
    script = Path(__file__).parent / "kill_trials.py"
    cmd = [
        sys.executable,
        str(script),
        str(tmp_path),
        str(out),
        "--trials",
        str(TRIALS),
        "--steps",
        str(STEPS),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = json.loads(out.read_text())["trials"]
    assert len(trials) == TRIALS >= 30
    failed = [t for t in trials if not t["equal"]]
    assert not failed, failed[:3]
    assert sum(t["killed"] for t in trials) >= TRIALS // 2, "most kills should land mid-run"
    mid_run = sum(t["resumes"][:1] == [0] for t in trials)  # resumed from a checkpoint of the killed run
    assert mid_run >= TRIALS // 3, f"only {mid_run} trials resumed from a mid-run checkpoint"
    staged = [p for p in tmpdir.rglob("*") if p.is_file() and p.stat().st_size > 100_000]
    assert not staged, f"checkpoint-sized files staged in $TMPDIR: {staged[:3]}"
