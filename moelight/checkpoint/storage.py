"""Failures of the output disk (full, read-only, quota) as one message, never a traceback.

Mid-run they stop training with exit status 3 (`TrainingStopped`); the previous checkpoint is
untouched because every save goes to a temporary name first (checkpoint_io.py).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from moelight.errors import TrainingStopped

STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM, errno.EFBIG}


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint dict: about what its file will take."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def _mb(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 1e6:.1f} MB"


def save_failed(path: Path, exc: BaseException, needed: int) -> TrainingStopped:
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
    return TrainingStopped(
        f"could not save checkpoint {path} ({reason}): it needs about {_mb(needed)}, "
        f"{_mb(free_bytes(path.parent))} free there; its partial files were removed and the previous "
        "checkpoint is kept; free space or choose another trainer.out_dir, then --resume last"
    )


@contextmanager
def storage_errors(out_dir: str | Path) -> Iterator[None]:
    """Turn an output-disk OSError raised while training into TrainingStopped (exit 3)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        where = exc.filename or out_dir
        raise TrainingStopped(
            f"cannot write to {where} ({exc.strerror}; {_mb(free_bytes(Path(str(where))))} free); "
            "the last complete checkpoint is kept; free space or choose another trainer.out_dir, "
            "then --resume last"
        ) from None


def fsync_file(f) -> None:
    f.flush()
    os.fsync(f.fileno())
