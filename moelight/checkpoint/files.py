"""Checkpoint files that are either complete or absent: write to a temporary name beside the
target (same filesystem, never $TMPDIR), fsync, then rename."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from moelight.checkpoint.storage import fsync_file, save_failed, tensor_bytes
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
        # Lightning's own atomic save stages the file in $TMPDIR (often small) and copies it over.
        path = Path(path)
        tmp = path.with_name(f".{path.name}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                fsync_file(f)
            publish(tmp, path)
        except (OSError, RuntimeError) as exc:  # torch reports a failed write as RuntimeError
            tmp.unlink(missing_ok=True)
            raise save_failed(path, exc, tensor_bytes(checkpoint)) from None


def checkpoint_corrupt(path: str | Path, reason: str) -> MoelightError:
    return MoelightError(f"corrupt checkpoint {path}: {reason}; use another checkpoint")


def check_checkpoint_file(path: str | Path) -> None:
    """Refuse a missing, corrupt or foreign checkpoint file before torch or Lightning reads it."""
    path = Path(path)
    if path.is_dir():
        return  # a sharded (distributed) checkpoint: its strategy checks it
    if not path.is_file():
        raise MoelightError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise checkpoint_corrupt(path, "not a torch checkpoint (not a readable zip archive)")
    try:
        with zipfile.ZipFile(path) as zf:
            if not any(n.endswith("data.pkl") for n in zf.namelist()):
                raise checkpoint_corrupt(path, "a zip archive, but not a torch checkpoint (no data.pkl)")
            bad = zf.testzip()
    except MoelightError:
        raise
    except Exception as exc:  # zipfile raises more than BadZipFile on damaged headers (UnicodeDecodeError...)
        raise checkpoint_corrupt(path, f"damaged zip archive ({type(exc).__name__}: {exc})") from None
    if bad is not None:
        raise checkpoint_corrupt(path, f"member {bad} fails its CRC check")


def load_checkpoint_file(path: str | Path, mmap: bool = False) -> Any:
    """`torch.load` of a checkpoint file that never runs code from it (`weights_only=True`:
    tensors and plain values only); anything else is one "corrupt checkpoint" line."""
    check_checkpoint_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:  # torch's own text would advise unsafe loading (weights_only=False): never
        raise checkpoint_corrupt(
            path, "not a readable torch checkpoint of tensors and plain values (anything else is refused)"
        ) from None
