"""SIGTERM / SIGINT in the first moments of a process, and at the start-up of a launched run.

Light on purpose (standard library only): `moelight`'s entry point installs `early_handler`
before it imports anything heavy, so a SIGTERM while torch and Lightning are still importing
ends with "SIGTERM: interrupted" and 143, not a silent death (SIGINT: 130). `moelight fit` then
hands over to outside_loop_signals.py, and from `fit`'s setup on to PreemptionGuard.

Multi-process start-up, Lightning's launcher (rank 0 re-runs the command line for ranks 1..N-1):
its observer thread SIGKILLs every process, rank 0 included, as soon as one rank exits with a
non-zero status, so a rank that ended with 143 made the job end with 137. And a rank blocked in
the C++ rendezvous (`init_process_group`) runs no Python signal handler until it times out.
So, during start-up (`StartupWatch`):
- a rank the launcher started forwards the signal to the launcher and exits only once the
  launcher is gone (nobody is left to SIGKILL anything);
- the launcher signals its child ranks with the same signal and exits with 143 / 130; where its
  main thread cannot raise (blocked in C++), a watcher thread woken by `signal.set_wakeup_fd`
  does it after a short grace.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
LAUNCHER_ENV = "MOELIGHT_LAUNCHER_PID"  # set by the first process; inherited by the ranks it launches
GRACE_S = 1.0  # the main thread's chance to handle a signal itself before the watcher acts
WAIT_FOR_LAUNCHER_S = 30.0


class Interrupted(BaseException):
    """A stop signal before training started (a BaseException, like KeyboardInterrupt: no
    `except Exception` in data or plugin code may swallow it)."""

    def __init__(self, sig: signal.Signals):
        super().__init__(sig.name)
        self.signal = sig


def exit_code(sig: signal.Signals) -> int:
    return EXIT_CODES.get(sig, 128 + int(sig))


def _early(signum: int, frame: object) -> None:
    # No exception: raised inside an import (torch, numpy) it can leave a module half-initialised
    # and surface as another error (exit 1). Nothing is written before a verb's own handling.
    sig = signal.Signals(signum)
    sys.stderr.write(f"{sig.name}: interrupted\n")
    sys.stderr.flush()
    if launcher_pid() is None:
        os._exit(exit_code(sig))

    def end_after_launcher() -> None:
        end_launched_rank(sig)
        os._exit(exit_code(sig))

    for other in SIGNALS:  # this rank is ending: the launcher's echo of the signal changes nothing
        signal.signal(other, signal.SIG_IGN)
    threading.Thread(target=end_after_launcher, daemon=True).start()


def early_handler() -> dict[int, Any] | None:
    """SIGTERM and SIGINT end the process with 143 / 130 from now on (a rank Lightning launched:
    after its launcher); returns the handlers replaced (None outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {sig: signal.signal(sig, _early) for sig in SIGNALS}


def launcher_pid() -> int | None:
    """The pid of the moelight process that launched this rank (None: this is not such a rank)."""
    pid = os.environ.get(LAUNCHER_ENV)
    return int(pid) if pid and pid.isdigit() and int(pid) == os.getppid() else None


@contextmanager
def marked_as_launcher() -> Iterator[None]:
    """Ranks that Lightning's launcher starts from this process in the block inherit its pid
    (removed afterwards: processes a notebook or test starts later are no ranks of it)."""
    if launcher_pid() is not None:  # a launched rank: it launches nothing
        yield
        return
    before = os.environ.get(LAUNCHER_ENV)
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(LAUNCHER_ENV, None)
        else:
            os.environ[LAUNCHER_ENV] = before


def children() -> list[int]:
    """This process's child processes (Linux /proc; empty elsewhere)."""
    out = []
    for task in Path(f"/proc/{os.getpid()}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def signal_children(sig: signal.Signals) -> None:
    for pid in children():
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def wait_for_launcher_exit(timeout: float = WAIT_FOR_LAUNCHER_S) -> None:
    """A launched rank: return once the launcher is gone (its observer would SIGKILL everyone
    if this rank exited non-zero first)."""
    launcher = launcher_pid()
    deadline = time.monotonic() + timeout
    while launcher is not None and os.getppid() == launcher and time.monotonic() < deadline:
        time.sleep(0.05)


def end_launched_rank(sig: signal.Signals) -> None:
    """Before a rank the launcher started exits for `sig`: tell the launcher, wait until it is gone."""
    launcher = launcher_pid()
    if launcher is None:
        return
    if threading.current_thread() is threading.main_thread():
        for other in SIGNALS:  # this rank is ending: the launcher's echo of the signal changes nothing
            signal.signal(other, signal.SIG_IGN)
    try:
        os.kill(launcher, sig)
    except OSError:
        pass
    wait_for_launcher_exit()


class StartupWatch:
    """See the module docstring. `active()` says whether start-up handling is still in charge
    (not once training started or another handler took over); `raised()` whether the main
    thread has raised `Interrupted` for the signal."""

    def __init__(self, active, raised) -> None:
        self.active, self.raised = active, raised
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._stop = False
        self._handled = False
        threading.Thread(target=self._watch, name="moelight-startup-signals", daemon=True).start()

    def close(self) -> None:
        self._stop = True
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write)  # ends the watcher's read

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read, 64)
            except OSError:
                return
            if not data or self._stop:
                os.close(self._read)
                return
            for signum in data:
                if signum in (int(s) for s in SIGNALS) and self.active() and not self._handled:
                    self._handled = True  # the first one only: forwarded signals must not ping-pong
                    self._on_signal(signal.Signals(signum))

    def _on_signal(self, sig: signal.Signals) -> None:
        if launcher_pid() is not None:  # tell the launcher; this rank exits once it is gone
            end_launched_rank(sig)
        else:
            signal_children(sig)  # the ranks this launcher started (none before `fit` launches them)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline:
            if self.raised() or not self.active():
                return  # the main thread is handling it
            time.sleep(0.05)
        # the main thread is blocked in C++ (e.g. the rendezvous): end the process from here
        sys.stderr.write(f"{sig.name}: interrupted before training started, nothing saved\n")
        sys.stderr.flush()
        os._exit(exit_code(sig))
