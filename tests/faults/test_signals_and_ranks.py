"""Guarantees under signals and lost ranks:

- SIGTERM / SIGINT to a single-process run: it stops at a step boundary, saves `last.ckpt` there,
  exits 143 / 130, and `--resume last` ends with exactly the uninterrupted run's weights;
- through the real P = 2 launcher: SIGTERM to the launched rank saves on every rank and exits 143,
  and a killed rank stops the other with one message naming it (exit 3); `--resume last`
  continues. Random moments, SIGINT, either rank and SIGSTOP: test_ep_faults.py.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from conftest import TINY

from faults.helpers import (
    SLOW_ROUTER,
    rank_pid,
    resume_ep,
    run_fit,
    start_ep,
    start_fit,
    step_of,
    tail,
    wait_for,
)
from moelight.training.run_dir import newest_checkpoint

CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_single_process_signal_saves_exits_and_resumes_exactly(tmp_path, run_env, sig):
    steps = 14
    args = [a for a in TINY if not a.startswith("trainer.max_steps")] + SLOW_ROUTER
    args += [f"trainer.max_steps={steps}", "trainer.logger=none"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert run_fit(*args, f"trainer.out_dir={ref}", env=run_env, log=tmp_path / "ref.log") == 0
    proc = start_fit(*args, f"trainer.out_dir={run}", env=run_env, log=tmp_path / "run.log")
    wait_for(lambda: (run / "checkpoints" / "step000002.ckpt").exists(), 300, "the first checkpoint", proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=300) == CODES[sig], tail(tmp_path / "run.log")
    stopped = step_of(run / "checkpoints" / "last.ckpt")
    assert 2 <= stopped < steps and f"stopped by {sig.name} at step {stopped}" in tail(tmp_path / "run.log")
    log = tmp_path / "resume.log"
    assert run_fit(*args, f"trainer.out_dir={run}", "--resume", "last", env=run_env, log=log) == 0, tail(log)
    a = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_p2_sigterm_to_the_launched_rank_saves_on_every_rank_and_resumes(tmp_path, run_env):
    """Through the real launcher (rank 1 a child of rank 0; random moments and both signals are in
    test_ep_faults.py): SIGTERM to rank 1 makes both ranks save one complete sharded checkpoint at
    the same step boundary; rank 0 exits 143; `--resume last` continues."""
    proc, out = start_ep(tmp_path, run_env)
    os.kill(rank_pid(out, 1), signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, tail(tmp_path / "run.log")
    last = out / "checkpoints" / "last.ckpt"
    stopped = step_of(last)  # COMPLETE: every rank's shard was written at that step
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    resume_ep(tmp_path, run_env, out, stopped + 2)


@pytest.mark.slow
def test_p2_rank_death_stops_the_other_naming_it_and_resume_continues(tmp_path, run_env):
    """Through the real launcher: rank 1 killed (SIGKILL) mid-run makes rank 0 exit 3 promptly
    (a closed connection, not the timeout) with one message naming rank 1; `--resume last` continues."""
    proc, out = start_ep(tmp_path, run_env)
    os.kill(rank_pid(out, 1), signal.SIGKILL)
    t0 = time.monotonic()
    code = proc.wait(timeout=300)
    log = tail(tmp_path / "run.log")
    assert code == 3, log
    assert time.monotonic() - t0 < 60
    assert "lost rank 1" in " ".join(log.split()) and "was killed" in log
    _, saved = newest_checkpoint(out / "checkpoints")  # what `--resume last` will take
    resume_ep(tmp_path, run_env, out, saved + 2)
