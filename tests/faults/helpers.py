"""Helpers of the fault-injection suite: subprocess runs of `moelight fit` and waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import TINY

FAULTS = Path(__file__).parent
ROOT = FAULTS.parents[1]
FAULTY = FAULTS / "faulty_router.py"
SLOW_ROUTER = [f"plugins=[{FAULTY}]", "router.name=faulty", "router.delay_s=0.05"]  # >= 0.1 s a step
# A P = 2 run through the real launcher (Lightning starts rank 1); the timeout leaves room for a
# rank that starts slowly on a loaded machine.
EP = [
    str(ROOT / "recipes" / "ep-cpu.yaml"),
    *[a for a in TINY if not a.startswith(("trainer.max_steps", "trainer.checkpoint_every"))],
    *SLOW_ROUTER,
    "trainer.checkpoint_every_n_steps=2",
    "trainer.logger=none",
    "parallel.collective_timeout_s=120",
]


def start_fit(*args: str, env: dict, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "moelight", "fit", *args]
    fh = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**env, "COLUMNS": "200"})


def run_fit(*args: str, env: dict, log: Path, timeout: float = 300) -> int:
    proc = start_fit(*args, env=env, log=log)
    return proc.wait(timeout=timeout)


def start_ep(tmp_path: Path, env: dict) -> tuple[subprocess.Popen, Path]:
    """A long P = 2 run under tmp_path/run, returned once its step-2 checkpoint is complete."""
    out = tmp_path / "run"
    proc = start_fit(
        *EP, "trainer.max_steps=1000", f"trainer.out_dir={out}", env=env, log=tmp_path / "run.log"
    )
    done = out / "checkpoints" / "step000002.ckpt" / "COMPLETE"
    wait_for(done.exists, 300, "a checkpoint", proc)
    return proc, out


def resume_ep(tmp_path: Path, env: dict, out: Path, steps: int) -> None:
    """`--resume last` of a P = 2 run to `steps`: it must finish there."""
    log = tmp_path / "resume.log"
    code = run_fit(
        *EP, f"trainer.max_steps={steps}", f"trainer.out_dir={out}", "--resume", "last", env=env, log=log
    )
    assert code == 0, tail(log)
    assert step_of(out / "checkpoints" / "last.ckpt") == steps


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def rank_pid(out: Path, rank: int) -> int:
    return json.loads((out / ".ranks" / f"{rank}.json").read_text())["pid"]


def step_of(ckpt: Path) -> int:
    if ckpt.is_dir():
        return json.loads((ckpt / "COMPLETE").read_text())["step"]
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


def tail(log: Path, n: int = 3000) -> str:
    return log.read_bytes()[-n:].decode(errors="replace")


def is_root() -> bool:
    return os.geteuid() == 0


def same_state(got: dict, ref: dict) -> bool:
    """Bit-identical step, weights and AdamW state."""
    g, r = got["optim"][0]["state"], ref["optim"][0]["state"]
    return (
        got["step"] == ref["step"]
        and got["state"].keys() == ref["state"].keys()
        and all(torch.equal(got["state"][k], v) for k, v in ref["state"].items())
        and g.keys() == r.keys()
        and all(
            g[p].keys() == s.keys() and all(torch.equal(g[p][n], v) for n, v in s.items())
            for p, s in r.items()
        )
    )
