"""Checkpoints read one tensor part at a time: what `model.init_from` loads shard by shard.

A `WeightSource` names its tensors (moelight state-dict names, all experts `[E, ...]`), tells
their shapes without reading them, and reads one part of one tensor: rows along dim 0 (a list
of row ids, e.g. this rank's global expert ids, or a range) and a range along every other dim
(e.g. an FSDP2 Shard's chunk). So a rank holds its shard plus at most one tensor being read,
never the whole model.

- `SafetensorsSource`: a `.safetensors` file, read with `safe_open(...).get_slice(...)`.
- `TorchFileSource`: a Lightning `.ckpt` (or `.pt`), with `torch.load(mmap=True, weights_only=True)`.

Both map the file (safetensors 0.8 returns views of a whole-file mapping), and the pages of a
mapping that was read count toward the process's memory while it lives. So each read maps the
file anew, copies its part out, and drops the mapping: what stays is the copy.
- `ShardedDirSource`: a moelight expert-parallel checkpoint directory (torch.distributed.checkpoint),
  experts stored per global id: only the wanted experts' tensors are read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from moelight.checkpoint.files import check_checkpoint_file, checkpoint_corrupt
from moelight.errors import MoelightError

# One tensor part: dim 0 as a list of row ids or a slice, every further dim as a slice.
Index = tuple[Sequence[int] | slice, ...]

CKPT_PREFIX = "model."  # the training module holds the transformer as `self.model`


def row_runs(rows: Sequence[int]) -> Iterator[slice]:
    """Consecutive runs of `rows` as slices ([4, 5, 6, 1] -> 4:7, 1:2): fewer, larger reads."""
    start = prev = None
    for r in rows:
        if start is not None and r == prev + 1:
            prev = r
            continue
        if start is not None:
            yield slice(start, prev + 1)
        start = prev = r
    if start is not None:
        yield slice(start, prev + 1)


def read_rows(read_slices, index: Index) -> torch.Tensor:
    """`read_slices(tuple of slices)` over `index`, whose dim 0 may be a list of row ids, as a
    new contiguous tensor: the slices may be views of a file mapping, which must not outlive
    the read (its pages would count toward the process's memory, and the file could change)."""
    first, rest = index[0], tuple(index[1:])
    runs = [first] if isinstance(first, slice) else list(row_runs(first))
    parts = [read_slices((run, *rest)) for run in runs]
    return parts[0].clone(memory_format=torch.contiguous_format) if len(parts) == 1 else torch.cat(parts)


class WeightSource:
    """Tensors by moelight name, read part by part. A context manager: `close()` frees handles."""

    path: Path
    recipe: dict[str, Any] | None = None  # the recipe the source carries, when it has one

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def read(self, name: str, index: Index | None = None) -> torch.Tensor:
        """Tensor `name`, or its part `index`, as a new CPU tensor in the stored dtype."""
        raise NotImplementedError

    def read_all(self) -> dict[str, torch.Tensor]:
        """Every tensor, whole (for single-process uses: eval, profile, export)."""
        return {name: self.read(name) for name in self.names()}

    def close(self) -> None:
        pass

    def __enter__(self) -> WeightSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def full_index(shape: tuple[int, ...]) -> Index:
    return tuple(slice(0, n) for n in shape)


class SafetensorsSource(WeightSource):
    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        self._open = safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                self._shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise checkpoint_corrupt(path, f"not a readable safetensors file ({exc})") from None

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def read(self, name: str, index: Index | None = None) -> torch.Tensor:
        index = full_index(self._shapes[name]) if index is None else index
        try:
            with self._open(str(self.path), framework="pt") as f:
                part = f.get_slice(name)
                if not self._shapes[name]:  # a 0-dim tensor cannot be sliced
                    return f.get_tensor(name).clone()
                return read_rows(lambda sl: part[sl], index).contiguous()
        except Exception as exc:
            raise checkpoint_corrupt(self.path, f"cannot read {name} ({exc})") from None


class TorchFileSource(WeightSource):
    """A Lightning checkpoint: its `state_dict`'s `model.*` tensors, mapped anew for each read."""

    def __init__(self, path: Path):
        check_checkpoint_file(path)
        self.path = path
        ckpt, mapped = self._load()
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise MoelightError(f"{path}: not a Lightning checkpoint (no state_dict)")
        state = self._model_state(ckpt)
        if not state:
            raise MoelightError(
                f"{path}: its state_dict has no '{CKPT_PREFIX}*' weights (not a moelight checkpoint)"
            )
        self._shapes = {k: tuple(v.shape) for k, v in state.items()}
        self._state = None if mapped else state  # a file that cannot be mapped is held whole
        recipe = (ckpt.get("hyper_parameters") or {}).get("recipe")
        self.recipe = recipe if isinstance(recipe, dict) else None

    def _load(self) -> tuple[Any, bool]:
        """(the checkpoint, whether its tensors are mapped rather than read)."""
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True, mmap=True), True
        except RuntimeError:  # a legacy (non-zip) file cannot be mapped: read it whole
            pass
        except Exception:  # torch's own text would advise unsafe loading (weights_only=False)
            raise checkpoint_corrupt(self.path, "not a readable torch checkpoint") from None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True), False
        except Exception:
            raise checkpoint_corrupt(self.path, "not a readable torch checkpoint") from None

    @staticmethod
    def _model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {k[len(CKPT_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(CKPT_PREFIX)}

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def read(self, name: str, index: Index | None = None) -> torch.Tensor:
        state = self._state if self._state is not None else self._model_state(self._load()[0])
        t = state[name]
        if not self._shapes[name]:
            return t.clone()
        return read_rows(lambda sl: t[sl], full_index(self._shapes[name]) if index is None else index)

    def read_all(self) -> dict[str, torch.Tensor]:
        state = self._state if self._state is not None else self._model_state(self._load()[0])
        return {k: v.clone() for k, v in state.items()}

    def close(self) -> None:
        self._state = None


class ShardedDirSource(WeightSource):
    """A moelight sharded checkpoint directory: dense tensors whole, experts one global id each."""

    def __init__(self, path: Path):
        from moelight.parallel.checkpoint import read_meta

        self.path = path
        meta = read_meta(path)
        info = meta["moelight_sharded"]
        keys = list(info["model_keys"])
        # A training run's directory holds Lightning's names (`model.` + moelight name); strip the
        # prefix as the .ckpt reader does, and put it back to find a tensor.
        self._prefix = CKPT_PREFIX if keys and all(k.startswith(CKPT_PREFIX) for k in keys) else ""
        cut = len(self._prefix)
        self._experts: dict[str, int] = {k[cut:]: n for k, n in info["experts"].items()}  # name -> experts
        self._names = [k[cut:] for k in keys]
        recipe = (meta.get("hyper_parameters") or {}).get("recipe")
        self.recipe = recipe if isinstance(recipe, dict) else None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._sizes = self._tensor_sizes()

    def _tensor_sizes(self) -> dict[str, tuple[int, ...]]:
        from moelight.checkpoint.dcp_metadata import read_dcp_metadata_safely

        metadata = read_dcp_metadata_safely(self.path).state_dict_metadata
        return {k: tuple(getattr(md, "size", ())) for k, md in metadata.items()}

    def _key(self, name: str, gid: int | None = None) -> str:
        from moelight.parallel.checkpoint import MODEL, expert_key

        name = self._prefix + name
        return MODEL + (name if gid is None else expert_key(name, gid))

    def names(self) -> list[str]:
        return list(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._experts:
            return (self._experts[name], *self._sizes[self._key(name, 0)])
        return self._sizes[self._key(name)]

    def read(self, name: str, index: Index | None = None) -> torch.Tensor:
        from moelight.parallel.checkpoint import read_tensors

        shape = self.shape(name)
        index = full_index(shape) if index is None else index
        if name not in self._experts:
            (t,) = read_tensors(self.path, [self._key(name)]).values()
            if not shape or all(i == slice(0, n) for i, n in zip(index, shape, strict=True)):
                return t
            return read_rows(lambda sl: t[sl], index)
        first = index[0]
        gids = list(range(shape[0]))[first] if isinstance(first, slice) else list(first)
        keys = [self._key(name, g) for g in gids]
        flat = read_tensors(self.path, keys)
        rows = [flat.pop(k)[tuple(index[1:])] for k in keys]
        return torch.stack(rows).contiguous()


def open_source(path: Path) -> WeightSource:
    """The reader for `path` (a file or a sharded directory), without reading any tensor."""
    if path.is_dir():
        return ShardedDirSource(path)
    if not path.is_file():
        raise MoelightError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return SafetensorsSource(path)
    if path.suffix in (".ckpt", ".pt", ".pth"):
        return TorchFileSource(path)
    raise MoelightError(
        f"{path}: unknown checkpoint type {path.suffix!r} (expected a converted directory, .safetensors or .ckpt)"
    )
