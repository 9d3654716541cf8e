"""A preempted run (SIGTERM) exits non-zero so schedulers requeue it, and its checkpoint resumes."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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


# Loaded as a recipe plugin (`plugins` need not match on resume): holds one phase of the run up
# for the test to signal it there, after writing a marker file.
SLOW_PHASE = """
import os, time
from pathlib import Path

from moelight.data.datamodule import MoEDataModule
from moelight.training.module import MoELanguageModel

PHASE, MARKER = os.environ["SLOW_PHASE"], Path(os.environ["SLOW_MARKER"])


def hold(seconds):
    MARKER.write_text(PHASE)
    time.sleep(seconds)


def slowed(cls, name, phase, seconds, when=lambda self: True):
    original = getattr(cls, name)

    def method(self, *args, **kwargs):
        if PHASE == phase and when(self) and not MARKER.exists():
            hold(seconds)
        return original(self, *args, **kwargs)

    setattr(cls, name, method)


slowed(MoEDataModule, "__init__", "data", 60)
slowed(MoELanguageModel, "configure_model", "model_build", 8)  # the guard holds the signal: no wake-up
slowed(
    MoELanguageModel, "on_validation_start", "final_validation", 5,
    when=lambda self: self.trainer.global_step >= self.trainer.max_steps,
)
"""


def fit_and_signal(tmp_path, run_env, argv, phase, sig) -> tuple[int, str]:
    """`moelight fit argv`, sent `sig` while `phase` is held up; (exit status, output)."""
    plugin, marker = tmp_path / "slow_phase.py", tmp_path / "marker"
    plugin.write_text(SLOW_PHASE)
    env = {**run_env, "SLOW_PHASE": phase, "SLOW_MARKER": str(marker)}
    cmd = [sys.executable, "-m", "moelight", "fit", *argv, f"plugins=[{plugin}]"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), f"{phase} was never reached: {proc.communicate()[0][-2000:]}"
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    return proc.returncode, " ".join(output.split())


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.mark.slow
@pytest.mark.parametrize("phase, sig, status", [("data", signal.SIGTERM, 143), ("data", signal.SIGINT, 130)])
def test_a_signal_before_training_starts_exits_at_once_and_touches_no_checkpoint(
    tiny, tmp_path, run_env, phase, sig, status
):
    from moelight.cli.main import main

    assert main(["fit", *tiny, "trainer.max_steps=2"]) == 0  # an earlier run to resume
    ckpts = tmp_path / "run" / "checkpoints"
    before = snapshot(ckpts)
    code, output = fit_and_signal(
        tmp_path, run_env, [*tiny, "trainer.max_steps=4", "--resume", "last"], phase, sig
    )
    assert code == status, output[-2000:]
    assert output.count(f"{sig.name}: interrupted before training started, nothing saved") == 1, output[
        -2000:
    ]
    assert "Traceback" not in output and "error" not in output.lower()
    assert snapshot(ckpts) == before


@pytest.mark.slow
def test_a_signal_inside_fit_before_the_first_step_stops_at_the_first_step_boundary(tiny, tmp_path, run_env):
    """Once `fit` has set up (model build, checkpoint restore) the preemption guard holds the
    signal: every rank stops at the same step boundary with a complete checkpoint (P = 2 ranks
    could not agree on an exit in the middle of a restore)."""
    from moelight.cli.main import main

    assert main(["fit", *tiny, "trainer.max_steps=2"]) == 0  # an earlier run to resume
    code, output = fit_and_signal(
        tmp_path, run_env, [*tiny, "trainer.max_steps=4", "--resume", "last"], "model_build", signal.SIGTERM
    )
    assert code == 143, output[-2000:]
    assert "stopped by SIGTERM at step 3; last.ckpt is saved" in output, output[-2000:]
    assert "Traceback" not in output
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3


@pytest.mark.slow
def test_a_signal_after_the_last_step_completes_the_final_checkpoint_and_exits_nonzero(
    tiny, tmp_path, run_env
):
    # (SIGINT takes the same path, to 130: test_signals_outside_the_loop_are_raised_held_or_recorded)
    sig, status = signal.SIGTERM, 143
    code, output = fit_and_signal(tmp_path, run_env, [*tiny, "trainer.max_steps=4"], "final_validation", sig)
    assert code == status, output[-2000:]
    assert (
        f"{sig.name} after the last step: the run completed and its final checkpoint (step 4) is saved"
        in output
    )
    assert "done: 4 steps" in output and "Traceback" not in output
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4


def test_signals_outside_the_loop_are_raised_held_or_recorded():
    from types import SimpleNamespace

    from moelight.training.outside_loop_signals import (
        Interrupted,
        TrainingStarted,
        held,
        late_signal,
        signals_outside_training,
    )

    def send(sig: signal.Signals) -> None:
        os.kill(os.getpid(), sig)
        time.sleep(0.05)  # Python runs the handler at the next bytecode boundary

    with signals_outside_training():
        with pytest.raises(Interrupted) as raised:
            send(signal.SIGINT)  # before training: at once
        assert raised.value.signal == signal.SIGINT
    with signals_outside_training():
        written = []
        with pytest.raises(Interrupted):
            with held():
                send(signal.SIGTERM)
                written.append("the block finished first")
        assert written == ["the block finished first"]
    with signals_outside_training():
        TrainingStarted().on_train_start(None, None)
        send(signal.SIGINT)  # after the last step: recorded only
        send(signal.SIGTERM)
        assert late_signal(SimpleNamespace(callbacks=[])) == signal.SIGTERM  # SIGTERM wins
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
