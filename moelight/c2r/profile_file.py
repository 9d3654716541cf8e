"""The profile artifact: its file format, its writer and its reader, together.

The artifact (`moelight profile CHECKPOINT --out DIR`) is a directory:

DIR/profile.safetensors — tensors, L = MoE layers (in model order), E = experts, k = top-k:
  coactivation       int64 [L, E, E]  tokens routed to both i and j (symmetric, zero diagonal)
  load               int64 [L, E]     tokens routed to each expert
  collaborators      int64 [L, E, E]  row i: the other experts by decreasing co-activation with i
                                      (ties: lower id first), i itself last — what the c2r router
                                      reads through `profile.path`
  concentration      float64 [L, E-1] column T-1: mean over experts of the share of an expert's
                                      co-activations held by its top-T collaborators
  specialization     float64 [L, E]   1 - normalised entropy of expert i's collaboration
                                      distribution p_ij = C_ij / sum_j C_ij: 0 = collaborates
                                      evenly with all E-1 others, 1 = with one only; NaN for an
                                      expert with no co-activation
  expert_sets        int64 [L, S, k]  every distinct set of experts a token was routed to
                                      (sorted ids; padded with -1 where a layer has fewer sets)
  expert_set_counts  int64 [L, S]     tokens per set (0 on padding): the exact routing histogram,
                                      from which the expected devices per token of any
                                      placement is computed exactly
DIR/profile.json — metadata and summary: format/version, the checkpoint, its recipe, the data
  and token count, shapes, the mean concentration curve, specialization, load CV, the LM loss
  over the profiled tokens, and per placement (`--devices N`) the kept co-activation share and
  expected devices per token, optimised vs contiguous.
DIR/placement-N.json — collaboration-aware placements (moelight/c2r/placement.py format).
DIR/coactivation.png, DIR/concentration.png — plots.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from moelight.errors import ConfigError

FORMAT = "moelight-profile"
VERSION = 1
PROFILE_TENSORS = "profile.safetensors"
PROFILE_META = "profile.json"


def write_profile(out_dir: str | Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> Path:
    """Write DIR/profile.safetensors (`tensors`) and DIR/profile.json (`info`); returns DIR."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(out / PROFILE_TENSORS),
        metadata={"format": FORMAT, "version": str(VERSION)},
    )
    write_profile_meta(out, {"format": FORMAT, "version": VERSION, **info})
    return out


def write_profile_meta(out: Path, info: dict[str, Any]) -> None:
    (out / PROFILE_META).write_text(_dumps(_json_safe(info)) + "\n")


def _dumps(value: Any, indent: int = 0) -> str:
    """Indented JSON with lists of numbers on one line, so per-layer values read as rows."""
    pad = " " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k)}: {_dumps(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [f"{pad}{_dumps(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(value, allow_nan=False)


def _json_safe(value: Any) -> Any:
    """NaN (an expert or layer with no co-activation) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def read_profile(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of an artifact; `path` is its directory or its .safetensors file."""
    tensors = read_profile_tensors(path, field="profile")
    p = Path(path)
    meta_file = (p if p.is_dir() else p.parent) / PROFILE_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return tensors, meta


def histogram_from_tensors(tensors: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer (sets [S, k], counts [S]) lists from an artifact's padded tensors."""
    sets, counts = tensors["expert_sets"], tensors["expert_set_counts"]
    return list(sets.unbind(0)), list(counts.unbind(0))


PROFILE_TENSORS = "profile.safetensors"
PROFILE_META = "profile.json"


def profile_artifact_file(path: str | Path) -> Path | None:
    """The safetensors file of a profile artifact named by `path` (its directory or the file
    itself), or None when `path` is not an artifact (e.g. a .npy/.json array)."""
    p = Path(path)
    if p.is_dir():
        return p / PROFILE_TENSORS
    if p.suffix.lower() == ".safetensors":
        return p
    return None


def read_profile_tensors(path: str | Path, field: str = "profile.path") -> dict[str, torch.Tensor]:
    """All tensors of a profile artifact (directory or .safetensors file), or a ConfigError."""
    file = profile_artifact_file(path)
    if file is None:
        raise ConfigError(field, f"{path} is not a profile artifact (a directory or a .safetensors file)")
    if not file.is_file():
        where = f"{path} has no {PROFILE_TENSORS}" if Path(path).is_dir() else f"{path} not found"
        raise ConfigError(field, f"{where} (make one with `moelight profile CHECKPOINT --out DIR`)")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(field, f"cannot read profile artifact {file}: {exc}") from None
