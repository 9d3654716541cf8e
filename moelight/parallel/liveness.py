"""Which rank was lost when a collective fails: killed, stopped, or silent.

Every rank records its host and pid under `<out_dir>/.ranks/` when training starts. When a
collective fails (a peer closed its connection, or nothing came within
`parallel.collective_timeout_s`), the surviving ranks look these up: a rank on this host whose
process is gone was killed, one in state T was stopped (SIGSTOP); others are reported as not
responding. The run then stops with one message (exit 3) instead of a gloo/NCCL traceback.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L

from moelight.errors import TrainingStopped

RANKS_DIR = ".ranks"
# Messages gloo and NCCL give when a peer is gone or silent.
PEER_FAILURE = (
    "connection closed by peer",
    "timed out",
    "timeout",
    "connection reset",
    "broken pipe",
    "socket",
)


def _rank_file(out_dir: str | Path, rank: int) -> Path:
    return Path(out_dir) / RANKS_DIR / f"{rank}.json"


def register_rank(out_dir: str | Path, rank: int) -> None:
    path = _rank_file(out_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))


def _state(pid: int) -> str | None:
    """The process state letter from /proc (R, S, T, Z...), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def lost_ranks(out_dir: str | Path, world_size: int, me: int) -> list[str]:
    """`rank R (killed|stopped|not responding)` for every other rank that looks lost."""
    out = []
    for rank in range(world_size):
        if rank == me:
            continue
        try:
            info = json.loads(_rank_file(out_dir, rank).read_text())
        except (OSError, ValueError):
            out.append(f"rank {rank} (never started?)")
            continue
        if info.get("host") != socket.gethostname():
            continue  # another machine: nothing to check from here
        state = _state(int(info["pid"]))
        if state in (None, "Z", "X"):
            out.append(f"rank {rank} (pid {info['pid']} was killed or died)")
        elif state in ("T", "t"):
            out.append(f"rank {rank} (pid {info['pid']} is stopped)")
    return out


class RankRegistry(L.Callback):
    def __init__(self, out_dir: str | Path):
        self.out_dir = out_dir

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            register_rank(self.out_dir, trainer.global_rank)


def mentions_peer_failure(text: str) -> bool:
    return any(p in text.lower() for p in PEER_FAILURE)


def is_peer_failure(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError | OSError) and mentions_peer_failure(str(exc))


@contextmanager
def peer_failures(trainer: L.Trainer, out_dir: str | Path, timeout_s: float) -> Iterator[None]:
    """Turn a failed collective of a multi-process run into TrainingStopped naming the lost rank(s)."""
    try:
        yield
    except Exception as exc:
        if trainer.world_size < 2 or not is_peer_failure(exc):
            raise
        me, world = trainer.global_rank, trainer.world_size
        lost = lost_ranks(out_dir, world, me) or ["another rank (not responding)"]
        raise TrainingStopped(
            f"rank {me}: lost {', '.join(lost)}: a collective failed or waited more than "
            f"parallel.collective_timeout_s={timeout_s:g}; stopping; continue with --resume last"
        ) from None
