"""A local Hugging Face checkpoint directory: config.json and its safetensors tensors, read lazily."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from moelight.errors import MoelightError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


@dataclass
class HFCheckpoint:
    """A local HF checkpoint directory: its config.json and its safetensors tensors (read lazily)."""

    path: Path
    config: dict[str, Any]
    files: dict[str, Path]  # tensor name -> file
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> HFCheckpoint:
        path = Path(path)
        if not path.is_dir():
            raise MoelightError(f"Hugging Face checkpoint directory not found: {path}")
        config_path = path / "config.json"
        if not config_path.is_file():
            raise MoelightError(f"{path}: no config.json (expected a Hugging Face checkpoint directory)")
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise MoelightError(f"{config_path}: cannot read: {exc}") from None
        if not isinstance(config, dict):
            raise MoelightError(f"{config_path}: expected a JSON object")
        files: dict[str, Path] = {}
        handles: dict[Path, Any] = {}
        index = path / INDEX_NAME
        if index.is_file():
            try:
                weight_map_ = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise MoelightError(f"{index}: cannot read the shard index: {exc}") from None
            missing = sorted({f for f in weight_map_.values() if not (path / f).is_file()})
            if missing:
                raise MoelightError(
                    f"{path}: missing weight files named in {INDEX_NAME}: {', '.join(missing[:5])}"
                    + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
                )
            files = {name: path / f for name, f in weight_map_.items()}
        else:
            shards = sorted(path.glob("*.safetensors"))
            if not shards:
                other = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
                hint = (
                    f" (found {', '.join(other[:3])}: only safetensors are read; re-save with "
                    "save_pretrained(..., safe_serialization=True))"
                    if other
                    else ""
                )
                raise MoelightError(f"{path}: missing weight files: no *.safetensors{hint}")
            for shard in shards:
                # Kept open: the tensors are read from the same handles later.
                handles[shard] = _safe_open(shard)
                files.update(dict.fromkeys(handles[shard].keys(), shard))
        return cls(path, config, files, handles)

    def has(self, name: str) -> bool:
        return name in self.files

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name)

    def _handle(self, name: str) -> Any:
        file = self.files[name]
        if file not in self._handles:
            self._handles[file] = _safe_open(file)
        return self._handles[file]


def _safe_open(file: Path) -> Any:
    try:
        return safe_open(str(file), framework="pt")
    except Exception as exc:  # safetensors raises its own error types
        raise MoelightError(f"{file}: not a readable safetensors file: {exc}") from None
