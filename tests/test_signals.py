"""A preempted run (SIGTERM) exits non-zero so schedulers requeue it, and its checkpoint resumes."""

import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY


@pytest.mark.slow
def test_sigterm_exits_nonzero_and_leaves_a_resumable_checkpoint(tmp_path, run_env):
    out = tmp_path / "run"
    args = [a for a in TINY if not a.startswith("trainer.max_steps")]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moelight",
            "fit",
            *args,
            "trainer.max_steps=1000000",
            f"trainer.out_dir={out}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=run_env,
    )
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.exists(), "no checkpoint was written before the deadline"
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output[-2000:]
    assert "SIGTERM" in output and "Traceback" not in output
    # The checkpoint holds the step where the signal stopped the run, not an older periodic one.
    stopped_at = int(re.search(r"stopped by SIGTERM at step (\d+)", " ".join(output.split())).group(1))
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == stopped_at >= 2
