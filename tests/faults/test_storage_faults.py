"""Guarantees of storage failures, on a real small filesystem (a tmpfs; needs root):

- the disk fills up mid-run: training stops with exit status 3 and one message naming the path,
  the bytes needed and the bytes free; the failed save leaves no partial file; the previous
  checkpoint stays loadable and `--resume last` takes it;
- a read-only output directory: exit status 2 and one message before training starts.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import TINY

from faults.helpers import is_root, run_fit, step_of, tail


@pytest.fixture()
def small_fs(tmp_path):
    """A 1.5 MB tmpfs: room for the recipe and one checkpoint of the tiny model (~0.8 MB), not two."""
    if not is_root():
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_disk_full_mid_run_stops_with_exit_3_and_keeps_the_previous_checkpoint(small_fs, tmp_path, run_env):
    out = small_fs / "run"
    log = tmp_path / "run.log"
    args = [a for a in TINY if not a.startswith("trainer.max_steps")]
    code = run_fit(
        *args, "trainer.max_steps=6", "trainer.logger=none", f"trainer.out_dir={out}", env=run_env, log=log
    )
    text = " ".join(tail(log).split())
    assert code == 3, text
    assert text.count("error:") == 1 and "Traceback" not in text
    assert "could not save checkpoint" in text and "needs about" in text and "free there" in text
    ckpts = out / "checkpoints"
    assert not [p for p in ckpts.iterdir() if p.name.endswith(".partial")], "partial files left behind"
    assert step_of(ckpts / "step000002.ckpt") == 2  # the previous checkpoint is intact and loadable


@pytest.mark.slow
def test_read_only_out_dir_is_exit_2_with_one_message(small_fs, tmp_path, run_env):
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    log = tmp_path / "run.log"
    code = run_fit(*TINY, f"trainer.out_dir={small_fs / 'run'}", env=run_env, log=log)
    text = " ".join(tail(log).split())
    assert code == 2 and "is not writable" in text and "Traceback" not in text, text
