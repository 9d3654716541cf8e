"""Signals during start-up (moelight/training/startup_signals.py).

- A single process: SIGTERM while torch and Lightning are still importing used to kill it
  silently (the default action); moelight's entry point now handles it first: 143 and a line.
- Two ranks under Lightning's launcher: a signal to rank 1 during its start-up made rank 1 exit
  143, whereupon the launcher's observer SIGKILLed rank 0 (the job ended 137, "Forcefully
  terminating all other processes"). Now every rank ends with the signal's status.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import TINY

from faults.helpers import EP, start_fit, tail, wait_for


def has_loaded_torch(pid: int) -> bool:
    """The process is importing torch (so it is inside moelight's entry point, early)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    """The `moelight fit` processes among `pid`'s children (not short-lived helpers it forks)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return [p for p in out if b"fit" in _cmdline(p) and b"moelight" in _cmdline(p)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"  # a zombie has ended (its parent has not reaped it yet)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_importing_exits_with_its_status(sig, tmp_path, run_env):
    log = tmp_path / "fit.log"
    proc = start_fit(*TINY, f"trainer.out_dir={tmp_path / 'run'}", env=run_env, log=log)
    wait_for(lambda: has_loaded_torch(proc.pid), 120, "torch to start importing", proc)
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    assert code == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig], tail(log)
    assert "Traceback" not in tail(log)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_rank_1_during_start_up_ends_every_rank_with_its_status(sig, tmp_path, run_env):
    log = tmp_path / "run.log"
    out = tmp_path / "run"
    proc = start_fit(*EP, "trainer.max_steps=50", f"trainer.out_dir={out}", env=run_env, log=log)
    rank1: list[int] = []

    def rank1_started() -> bool:
        rank1[:] = children_of(proc.pid)
        return bool(rank1) and has_loaded_torch(rank1[0])

    wait_for(rank1_started, 300, "rank 1 to start", proc)
    time.sleep(0.5)  # well inside rank 1's start-up (imports, recipe, data)
    os.kill(rank1[0], sig)
    code = proc.wait(timeout=300)
    text = tail(log, 20000)
    assert code == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig], text
    assert "Forcefully terminating" not in text and "Traceback" not in text, text
    wait_for(lambda: gone(rank1[0]), 60, "rank 1 to end")
    assert not (out / "checkpoints").exists()  # nothing saved, nothing half-written
