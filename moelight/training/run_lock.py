"""One `moelight fit` per run directory: an exclusive lock on `<out_dir>/.moelight.lock`.

Taken before anything else in `out_dir` is written and held until the process ends. It is an
advisory POSIX record lock (`fcntl.lockf`): the kernel drops it when the holder exits, however it
exits (a SIGKILLed run leaves a file, not a lock, and the next run takes it over). The file
records the holder's pid, host and start time, for the refusal's message only.

Multi-process runs: only the first process locks (the one that launches the other ranks with
Lightning's launcher, or global rank 0 under torchrun/SLURM); Lightning re-runs the command line
in each other rank, and those must not wait for their own launcher's lock.

Shared filesystems: POSIX locks work across hosts on NFSv4 and on Lustre/GPFS mounted with
locking (`flock`/`localflock` options differ: check with the cluster's admins); on a filesystem
without working locks the lock only guards runs started on the same host.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moelight.errors import MoelightError

LOCK_FILE = ".moelight.lock"


def _holder(path: Path) -> str:
    """`pid N on host H (since T)` from the lock file; the holder may not have written it yet."""
    for _ in range(20):
        try:
            info = json.loads(path.read_text())
            return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "holder unknown"


@contextmanager
def run_lock(out_dir: str | Path) -> Iterator[Path]:
    """Hold the lock of run directory `out_dir` (created if needed) for the block.

    Raises MoelightError (exit 2) when another live process holds it.
    """
    out = Path(out_dir)
    path = out / LOCK_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise MoelightError(
            f"trainer.out_dir {out} is not writable ({exc.strerror or exc}); choose a writable directory"
        ) from None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise MoelightError(f"cannot lock trainer.out_dir {out} ({exc.strerror or exc})") from None
            raise MoelightError(
                f"trainer.out_dir {out} is in use by another moelight fit ({_holder(path)}); "
                "wait for it to end, or set another trainer.out_dir"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock (and so does the process's end, however it ends)
