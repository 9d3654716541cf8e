"""Expert collaboration: co-activation counts, collaborator lists, and reading profiles.

Collaboration of experts i and j in a layer is the number of tokens routed to both (the
diagonal is excluded). Expert i's collaborator list is the other experts sorted by that count,
most collaborative first, with i itself last. C2R routing, collaboration-aware placement,
the profiler and the training metrics all use the functions here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from moelight.errors import ConfigError

FIELD = "profile.path"


def coactivation_counts(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Tokens routed to both i and j, as a LongTensor [E, E] with a zero diagonal.

    `experts`: LongTensor [T, k] of expert ids per token.
    """
    # Multi-hot [T, E]; clamp so a (never expected) repeated id still counts the token once.
    hot = torch.nn.functional.one_hot(experts.long(), num_experts).sum(1).clamp_(max=1)
    # float32 matmul is exact for counts below 2**24 tokens per call, and runs on every backend.
    hot = hot.to(torch.float32)
    counts = (hot.T @ hot).round_().long()
    counts.fill_diagonal_(0)
    return counts


def off_diagonal(counts: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A float64 copy of co-activation counts [..., E, E] with a zero diagonal (no self-collaboration)."""
    c = torch.as_tensor(counts).to(torch.float64).clone()
    c.diagonal(dim1=-2, dim2=-1).zero_()
    return c


def collaborators_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Collaborator lists [..., E, E] from co-activation counts [..., E, E].

    Row i: the other experts by descending count (ties: lower expert id first), then i itself.
    """
    counts = torch.as_tensor(counts)
    key = counts.to(torch.float64).clone()
    # -inf on the diagonal sends the expert itself to the end of its own row.
    key.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    # A stable descending sort keeps equal counts in ascending id order.
    return torch.sort(key, dim=-1, descending=True, stable=True).indices


def is_collaborator_list(arr: np.ndarray | torch.Tensor) -> bool:
    """True when every row of `arr` [..., E, E] is a permutation of 0..E-1."""
    t = arr if isinstance(arr, torch.Tensor) else torch.from_numpy(np.asarray(arr))
    if t.dim() < 2 or t.shape[-1] != t.shape[-2] or t.numel() == 0:
        return False
    if t.is_floating_point() and not bool((t == t.round()).all()):
        return False
    e = t.shape[-1]
    # Explicit device: callers may build models under a `torch.device("meta")` context.
    return bool((t.sort(dim=-1).values == torch.arange(e, dtype=t.dtype, device=t.device)).all())


def concentration(counts: torch.Tensor, t: int) -> float:
    """Mean over experts of the share of co-activations held by the top-t collaborators.

    `counts`: [..., E, E] co-activation counts (diagonal ignored); leading dims (layers) are
    averaged too. Experts with no co-activation at all are left out of the mean (0.0 if none).
    """
    c = off_diagonal(counts)
    t = max(0, min(int(t), c.shape[-1]))
    top = c.topk(t, dim=-1).values.sum(-1)
    total = c.sum(-1)
    active = total > 0
    if not bool(active.any()):
        return 0.0
    return float((top[active] / total[active]).mean())


# A `moelight profile` artifact: a directory holding PROFILE_TENSORS (safetensors) and
# PROFILE_META (JSON); moelight/profiling.py writes it and documents every tensor.
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


def read_profile_tensors(path: str | Path, field: str = FIELD) -> dict[str, torch.Tensor]:
    """All tensors of a profile artifact (directory or .safetensors file), or a ConfigError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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


def _load_artifact(path: str, num_layers: int, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = read_profile_tensors(path)
    missing = [k for k in ("collaborators", "coactivation") if k not in tensors]
    if missing:
        raise ConfigError(FIELD, f"{path}: the profile artifact lacks tensors {missing}")
    lists, counts = tensors["collaborators"], tensors["coactivation"]
    if lists.dim() != 3 or lists.shape[-1] != lists.shape[-2] or lists.shape != counts.shape:
        raise ConfigError(
            FIELD,
            f"{path}: collaborators {list(lists.shape)} and coactivation {list(counts.shape)} "
            "must both be [layers, E, E]",
        )
    layers, experts = lists.shape[0], lists.shape[-1]
    if (layers, experts) != (num_layers, num_experts):
        raise ConfigError(
            FIELD,
            f"{path}: the profile has {layers} MoE layers x {experts} experts, but the model has "
            f"{num_layers} MoE layers x {num_experts} experts (model.n_layers, model.moe_every, "
            "model.num_experts); profile a checkpoint of this model's shape",
        )
    if not is_collaborator_list(lists):
        raise ConfigError(FIELD, f"{path}: every collaborator list must be a permutation of 0..{experts - 1}")
    return lists.long().contiguous(), counts.to(torch.float32).contiguous()


def _read_array(path: str) -> np.ndarray:
    """The profile file as a numeric array, or a ConfigError saying why not."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(FIELD, f"collaboration profile not found: {path}")
    if not p.is_file():
        raise ConfigError(FIELD, f"{path} is not a file (expected a .npy or .json file)")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix == ".json":
            data = json.loads(p.read_text())
            # A JSON object may name what it holds; a bare nested list is detected below.
            if isinstance(data, dict):
                keys = [k for k in ("collaborators", "coactivation", "counts") if k in data]
                if len(keys) != 1:
                    raise ConfigError(
                        FIELD,
                        f"{path}: a JSON object must have exactly one of the keys "
                        f"'collaborators', 'coactivation' or 'counts' (got {sorted(data)})",
                    )
                data = data[keys[0]]
            arr = np.array(data)
        else:
            raise ConfigError(FIELD, f"{path}: unknown profile file type {p.suffix!r} (allowed: .npy, .json)")
    except ConfigError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ConfigError(FIELD, f"cannot read collaboration profile {path}: {exc}") from None
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ConfigError(FIELD, f"{path}: expected a numeric array of shape [layers, E, E] or [E, E]")
    return arr


def load_collaboration(
    path: str, num_layers: int, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read collaborator lists or co-activation counts from a `.npy` or `.json` file, or a
    `moelight profile` artifact (its directory or its `profile.safetensors`).

    The array is [layers, E, E] or [E, E] (the same for every layer). Rows that are all
    permutations of 0..E-1 are taken as collaborator lists; anything else as counts, from which
    the lists are computed. An artifact gives its own lists and counts, [layers, E, E] exactly.
    Returns (lists LongTensor[L, E, E], counts float32[L, E, E] or None).
    """
    if profile_artifact_file(path) is not None:
        return _load_artifact(path, num_layers, num_experts)
    arr = _read_array(path)
    if arr.ndim not in (2, 3):
        raise ConfigError(FIELD, f"{path}: expected shape [layers, E, E] or [E, E], got {list(arr.shape)}")
    if arr.shape[-1] != arr.shape[-2]:
        raise ConfigError(
            FIELD, f"{path}: the last two dimensions must be equal (E x E), got {list(arr.shape)}"
        )
    if arr.shape[-1] != num_experts:
        raise ConfigError(
            FIELD, f"{path}: expected {num_experts} experts (model.num_experts), got {arr.shape[-1]}"
        )
    if arr.ndim == 3 and arr.shape[0] != num_layers:
        raise ConfigError(FIELD, f"{path}: expected {num_layers} MoE layers, got {arr.shape[0]}")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() == 2:
        t = t.expand(num_layers, num_experts, num_experts)
    if is_collaborator_list(t):
        return t.long().contiguous(), None
    if not bool(torch.isfinite(t.to(torch.float64)).all()) or bool((t < 0).any()):
        raise ConfigError(
            FIELD,
            f"{path}: neither collaborator lists (rows that are permutations of 0..{num_experts - 1}) "
            "nor co-activation counts (finite, non-negative)",
        )
    return collaborators_from_counts(t).contiguous(), t.to(torch.float32).contiguous()
