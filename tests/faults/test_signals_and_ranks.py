"""Guarantees under signals and lost ranks:

- SIGTERM / SIGINT to a single-process run: it stops at a step boundary, saves `last.ckpt` there,
  exits 143 / 130, and `--resume last` ends with exactly the uninterrupted run's weights;
- SIGTERM / SIGINT to either rank of a P = 2 expert-parallel run: every rank saves one complete
  sharded checkpoint at the same step boundary and exits 143 / 130; `--resume last` continues;
- a P = 2 rank killed (SIGKILL) mid-run: the other stops within the collective timeout with one
  message naming the lost rank (exit 3), and `--resume last` continues from the last checkpoint.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from conftest import TINY

from faults.helpers import FAULTY, ROOT, rank_pid, run_fit, start_fit, step_of, tail, wait_for
from moelight.training.run_dir import newest_checkpoint

SLOW_ROUTER = [f"plugins=[{FAULTY}]", "router.name=faulty", "router.delay_s=0.05"]  # >= 0.1 s a step
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


EP = [
    str(ROOT / "recipes" / "ep-cpu.yaml"),
    *[a for a in TINY if not a.startswith(("trainer.max_steps", "trainer.checkpoint_every"))],
    *SLOW_ROUTER,
    "trainer.checkpoint_every_n_steps=2",
    "trainer.logger=none",
    "parallel.collective_timeout_s=30",
]


def start_ep(tmp_path, run_env, name: str, max_steps: int):
    out = tmp_path / name
    proc = start_fit(
        *EP,
        f"trainer.max_steps={max_steps}",
        f"trainer.out_dir={out}",
        env=run_env,
        log=tmp_path / f"{name}.log",
    )
    wait_for(
        lambda: (out / "checkpoints" / "step000002.ckpt" / "COMPLETE").exists(), 300, "a checkpoint", proc
    )
    return proc, out


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig,rank", [(signal.SIGTERM, 1), (signal.SIGINT, 0)], ids=["SIGTERM-rank1", "SIGINT-rank0"]
)
def test_p2_signal_to_either_rank_saves_on_every_rank_and_resumes(tmp_path, run_env, sig, rank):
    proc, out = start_ep(tmp_path, run_env, "run", max_steps=1000)
    target = proc.pid if rank == 0 else rank_pid(out, 1)
    os.kill(target, sig)
    assert proc.wait(timeout=300) == CODES[sig], tail(tmp_path / "run.log")
    last = out / "checkpoints" / "last.ckpt"
    stopped = step_of(last)  # COMPLETE: every rank's shard was written at that step
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    log = tmp_path / "resume.log"
    code = run_fit(
        *EP,
        f"trainer.max_steps={stopped + 2}",
        f"trainer.out_dir={out}",
        "--resume",
        "last",
        env=run_env,
        log=log,
    )
    assert code == 0, tail(log)
    assert step_of(last) == stopped + 2


@pytest.mark.slow
def test_p2_rank_death_stops_the_other_naming_it_and_resume_continues(tmp_path, run_env):
    proc, out = start_ep(tmp_path, run_env, "run", max_steps=1000)
    os.kill(rank_pid(out, 1), signal.SIGKILL)
    t0 = time.monotonic()
    code = proc.wait(timeout=300)
    log = tail(tmp_path / "run.log")
    assert code == 3, log
    assert time.monotonic() - t0 < 30 + 60  # the collective timeout, plus shutdown
    assert "lost rank 1" in " ".join(log.split()) and "was killed" in log
    _, saved = newest_checkpoint(out / "checkpoints")  # what `--resume last` will take
    resumed = tmp_path / "resume.log"
    code = run_fit(
        *EP,
        f"trainer.max_steps={saved + 2}",
        f"trainer.out_dir={out}",
        "--resume",
        "last",
        env=run_env,
        log=resumed,
    )
    assert code == 0, tail(resumed)
    assert step_of(out / "checkpoints" / "last.ckpt") == saved + 2
