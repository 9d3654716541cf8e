"""Reading torch.distributed.checkpoint (DCP) directories without running code from them.

DCP's `.metadata` file is a pickle, and `FileSystemReader.read_metadata` reads it with
`pickle.load` (torch 2.13), which imports and calls whatever the file names. Here it is read by
an unpickler that admits only DCP's own metadata classes and the few torch/pathlib values they
hold; any other name refuses the checkpoint. Tensor shards are read by DCP itself with
`torch.load(weights_only=True)`. (Non-tensor "bytes" entries would be `torch.load`ed without
that restriction: moelight never asks DCP for them.)
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from moelight.checkpoint.files import checkpoint_corrupt

METADATA_FILE = ".metadata"

# module -> names admitted from it (None: every class the module itself defines)
_ADMITTED: dict[str, set[str] | None] = {
    "torch.distributed.checkpoint.metadata": None,
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch": {"Size"},  # and every torch dtype, below
    "torch.serialization": {"_get_layout"},  # layout by name (torch.strided)
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class UnsafeCheckpoint(pickle.UnpicklingError):
    """The file names something outside DCP's metadata vocabulary."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        admitted = _ADMITTED.get(module, set())
        if admitted is None:
            value = getattr(dcp_metadata, name, None)
            if isinstance(value, type) and value.__module__ == module:
                return value
        elif name in admitted:
            return super().find_class(module, name)
        raise UnsafeCheckpoint(f"{module}.{name}")


def read_dcp_metadata_safely(path: str | Path) -> Metadata:
    """The `Metadata` of the DCP directory `path`, read without running code from it.

    Raises MoelightError ("corrupt checkpoint ...") when the file is unreadable, is not DCP
    metadata, or names anything else (a file that would run code when unpickled).
    """
    file = Path(path) / METADATA_FILE
    try:
        with open(file, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except UnsafeCheckpoint as exc:
        raise checkpoint_corrupt(
            path,
            f"{METADATA_FILE} names {exc}, which is not checkpoint metadata (refused: it could run code)",
        ) from None
    except Exception as exc:  # truncated, damaged, not a pickle
        raise checkpoint_corrupt(path, f"{METADATA_FILE} is unreadable ({type(exc).__name__})") from None
    if not isinstance(metadata, Metadata):
        raise checkpoint_corrupt(path, f"{METADATA_FILE} holds no DCP metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """`FileSystemReader` whose `.metadata` is read by `read_dcp_metadata_safely`; pass it to
    `dcp.load(..., storage_reader=SafeFileSystemReader(path))`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:  # per-rank metadata files: moelight writes none
            raise checkpoint_corrupt(self.path, "per-rank DCP metadata is not supported")
        metadata = read_dcp_metadata_safely(self.path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
