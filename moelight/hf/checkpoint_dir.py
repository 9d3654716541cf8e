"""A local Hugging Face checkpoint directory: config.json and its safetensors tensors, read part by part."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from moelight.errors import MoelightError
from moelight.model.weight_sources import Index, full_index, read_rows

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


@dataclass
class HFCheckpoint:
    """A local HF checkpoint directory: its config.json and its safetensors tensors (read lazily)."""

    path: Path
    config: dict[str, Any]
    files: dict[str, Path]  # tensor name -> file
    _shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

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
            shapes: dict[str, tuple[int, ...]] = {}
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
            shapes = {}
            for shard in shards:
                shard_shapes = _file_shapes(shard)
                shapes.update(shard_shapes)
                files.update(dict.fromkeys(shard_shapes, shard))
        return cls(path, config, files, shapes)

    def has(self, name: str) -> bool:
        return name in self.files

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._shapes:  # a sharded checkpoint: read its file's header once
            self._shapes.update(_file_shapes(self.files[name]))
        return self._shapes[name]

    def get(self, name: str) -> torch.Tensor:
        return self.read(name)

    def read(self, name: str, index: Index | None = None) -> torch.Tensor:
        """Tensor `name` or its part `index` (see moelight.model.weight_sources), copied out of a
        mapping of its file that is dropped again: reading never holds more than the part."""
        file = self.files[name]
        shape = self.shape(name)
        try:
            with safe_open(str(file), framework="pt") as f:
                if not shape:
                    return f.get_tensor(name).clone()
                part = f.get_slice(name)
                return read_rows(lambda sl: part[sl], full_index(shape) if index is None else index)
        except Exception as exc:  # safetensors raises its own error types
            raise MoelightError(f"{file}: cannot read {name}: {exc}") from None


def _file_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise MoelightError(f"{file}: not a readable safetensors file: {exc}") from None
