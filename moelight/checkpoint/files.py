"""Checkpoint files that are either complete or absent: write to a temporary name, then rename."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from moelight.errors import MoelightError


def publish(tmp: Path, path: Path) -> None:
    """Move a finished checkpoint `tmp` (file or directory) to `path`, replacing what is there.

    A file over a file is one atomic rename: a crash mid-save leaves the previous file intact. A
    directory in the way (e.g. a sharded checkpoint resumed without EP) is moved aside first.
    """
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.is_dir():
        path.rename(old)
    elif path.exists() and tmp.is_dir():
        path.unlink()
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        publish(tmp, path)


def check_checkpoint_file(path: str | Path) -> None:
    """Refuse a missing or corrupt checkpoint before Lightning gets a traceback out of it."""
    path = Path(path)
    if path.is_dir():
        return  # a sharded (distributed) checkpoint: its strategy checks it
    if not path.is_file():
        raise MoelightError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise MoelightError(
            f"checkpoint {path} is corrupt or not a torch checkpoint (not a readable zip archive)"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        raise MoelightError(f"checkpoint {path} is corrupt: {exc}") from None
    if bad is not None:
        raise MoelightError(f"checkpoint {path} is corrupt: member {bad} fails its CRC check")
