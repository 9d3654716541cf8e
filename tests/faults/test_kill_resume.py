"""Guarantee: a run killed (SIGKILL) at ANY moment, checkpointing every step, resumed with
`--resume last` (itself killed again, any number of times) until done, ends with exactly the weights
and optimizer state of an uninterrupted run; a kill never leaves a torn checkpoint (every visible
checkpoint loads); and nothing is ever staged in $TMPDIR (no orphan temp files after a kill)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KILLS = int(os.environ.get("MOELIGHT_FAULT_TRIALS", "30"))


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path, run_env):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    out = tmp_path / "result.json"
    env = {**run_env, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1"}
    script = Path(__file__).parent / "kill_trials.py"
    cmd = [sys.executable, str(script), str(tmp_path), str(out), "--kills", str(KILLS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    chains = result["chains"]
    events = [e for c in chains for e in c["events"]]
    kills = [e for e in events if e["killed"]]
    before_any = [e for e in kills if e["saved_after"] == 0]
    in_resume_startup = [e for e in kills if 0 < e["from_step"] == e["saved_after"]]
    after_training = [e for e in kills if e["saved_after"] > e["from_step"]]
    mid_save = [e for e in kills if e["mid_save"]]
    steps = result["steps"]
    resumed_mid_run = [e for e in events if 0 < e["from_step"] < steps] + [
        c for c in chains if 0 < c["final_from_step"] < steps
    ]
    print(
        f"\n{len(chains)} chains, {len(kills)} SIGKILLs: {len(before_any)} before the chain's first checkpoint, "
        f"{len(in_resume_startup)} in a resume's start-up, {len(after_training)} after the run trained and "
        f"saved a step; {len(mid_save)} mid-save (left a new .partial). {len(events) - len(kills)} runs finished before "
        f"their kill. {len(resumed_mid_run)} resumes from a mid-run checkpoint. Timing: {result['timing']}"
    )
    refs = result["references_equal_fresh"]
    assert all(refs.values()), f"uninterrupted runs differ from the fresh-process one: {refs}"
    assert KILLS >= 30 and len(kills) >= KILLS
    torn = [e for e in events if e["torn"]]
    assert not torn, f"torn checkpoints after a kill: {torn[:3]}"
    failed = [c for c in chains if not c["equal"]]
    assert not failed, failed[:3]
    assert mid_save, "no kill landed mid-save"
    assert len(after_training) >= KILLS // 4, "too few kills landed after a run trained"
    assert len(resumed_mid_run) >= KILLS // 2, (
        f"only {len(resumed_mid_run)} resumes from a mid-run checkpoint"
    )
    staged = [p for p in tmpdir.rglob("*") if p.is_file() and p.stat().st_size > 100_000]
    assert not staged, f"checkpoint-sized files staged in $TMPDIR: {staged[:3]}"
