"""The non-tensor part of a sharded checkpoint directory: `meta.json`, never a pickle.

It holds all Lightning saves besides tensors (loops, callbacks, schedulers, data position,
hyper-parameters) and moelight's layout (`moelight_sharded`), written by `write_meta` with the
tagged JSON of `moelight.checkpoint.json_state`, so that reading a checkpoint runs no code.

Directories written before this format hold `meta.pt` (a torch pickle). `safe_read_meta` reads
it with `torch.load(weights_only=True)`, which builds only plain values and tensors, and refuses
it with one line when it holds anything else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from moelight.checkpoint import json_state
from moelight.checkpoint.files import checkpoint_corrupt
from moelight.errors import MoelightError

META_FILE = "meta.json"
LEGACY_META_FILE = "meta.pt"  # moelight before meta.json: read only with weights_only=True
LAYOUT_KEY = "moelight_sharded"


def write_meta(directory: str | Path, meta: dict[str, Any]) -> None:
    """Write `meta` (rank 0's non-tensor checkpoint state) into the checkpoint `directory`."""
    (Path(directory) / META_FILE).write_text(json_state.dumps(meta))


def meta_file(directory: str | Path) -> Path | None:
    """The metadata file of a sharded checkpoint directory, if it has one."""
    for name in (META_FILE, LEGACY_META_FILE):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def safe_read_meta(directory: str | Path) -> dict[str, Any]:
    """The metadata of the sharded checkpoint `directory`, read without running code from it.

    Raises MoelightError: "corrupt checkpoint ..." for an unreadable file, "... is not a moelight
    checkpoint" when it lacks moelight's layout (another tool's directory).
    """
    directory = Path(directory)
    file = meta_file(directory)
    if file is None:
        raise not_moelight(directory, f"no {META_FILE}")
    if file.name == META_FILE:
        try:
            meta = json_state.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise checkpoint_corrupt(directory, f"{META_FILE} is unreadable ({type(exc).__name__})") from None
    else:
        try:
            meta = torch.load(file, map_location="cpu", weights_only=True)
        except Exception:  # torch's own message would advise weights_only=False: never
            raise checkpoint_corrupt(
                directory,
                f"its {LEGACY_META_FILE} (the format before {META_FILE}) cannot be read without running "
                "code from it, so it is refused",
            ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get(LAYOUT_KEY), dict):
        raise not_moelight(directory, f"its metadata has no {LAYOUT_KEY!r} layout")
    return meta


def not_moelight(directory: Path, reason: str) -> MoelightError:
    return MoelightError(
        f"{directory} is not a moelight checkpoint ({reason}); moelight reads the sharded "
        "checkpoints it wrote, single .ckpt files and `moelight convert import` directories"
    )
