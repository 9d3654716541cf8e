"""One `moelight fit` per run directory (moelight/training/run_lock.py).

Two fits into one `out_dir` used to both train: recipe.yaml from one, last.ckpt from the other.
Now the second exits 2 naming the holder, before writing anything; a lock left by a killed run
(a file no live process locks) is taken over.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import TINY

from faults.helpers import SLOW_ROUTER, start_fit, tail
from moelight.cli.main import main
from moelight.training.run_lock import LOCK_FILE

HOLDER = textwrap.dedent(
    """
    import sys, time
    from moelight.training.run_lock import run_lock
    with run_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(600)
    """
)


def test_a_locked_run_directory_is_refused_before_anything_is_written(tmp_path, run_env, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=run_env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["fit", *TINY, f"trainer.out_dir={out}"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"in use by another moelight fit (pid {holder.pid} on host {socket.gethostname()}" in err
        assert err.count("error:") == 1 and "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing else written
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path, run_env):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=run_env
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # SIGKILL: no clean-up runs; the file stays, the lock dies with the process
    holder.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid
    assert main(["fit", *TINY, f"trainer.out_dir={out}", "trainer.max_steps=1"]) == 0
    assert (out / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_two_fits_started_together_one_trains_the_other_exits_2(tmp_path, run_env):
    out = tmp_path / "run"
    common = [*TINY, *SLOW_ROUTER, "trainer.max_steps=30", f"trainer.out_dir={out}", "trainer.logger=csv"]
    procs = {
        seed: start_fit(*common, f"seed={seed}", env=run_env, log=tmp_path / f"seed{seed}.log")
        for seed in (1, 2)
    }
    codes = {seed: p.wait(timeout=600) for seed, p in procs.items()}
    assert sorted(codes.values()) == [0, 2], {s: tail(tmp_path / f"seed{s}.log") for s in codes}
    winner = next(s for s, c in codes.items() if c == 0)
    loser = 3 - winner
    refusal = " ".join(tail(tmp_path / f"seed{loser}.log").split())
    assert f"in use by another moelight fit (pid {procs[winner].pid} on host" in refusal
    assert "Traceback" not in refusal
    # the run directory is the winner's alone
    assert f"seed: {winner}" in (out / "recipe.yaml").read_text()
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["recipe"]["seed"] == winner and ckpt["global_step"] == 30
    assert not (out / "replaced").exists()
    assert [p.name for p in (out / "logs").iterdir()] == ["version_0"]  # one run logged
