"""`model.init_from`: start a model from a converted model or a moelight checkpoint.

Accepted: a `moelight convert import` directory (its `model.safetensors`), a `.safetensors` file
with moelight state-dict names, or a Lightning `.ckpt` whose `state_dict` keys are the training
module's (`model.` + moelight name). Expert tensors are stored for all experts (`[E, ...]`); a
rank that holds a subset of experts (expert parallelism) takes its rows by global expert id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from moelight.checkpoint.files import check_checkpoint_file, checkpoint_corrupt
from moelight.errors import MoelightError
from moelight.moe.experts import ExpertWeights
from moelight.parallel.checkpoint import consolidated_file
from moelight.recipe import read_recipe_dict

# The weight dtypes a user may name when loading a model (`moelight eval`, `moelight convert`).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

MODEL_FILE = "model.safetensors"
RECIPE_FILE = "recipe.yaml"
CKPT_PREFIX = "model."  # the training module holds the transformer as `self.model`


def first_names(names: list[str], n: int = 5) -> str:
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise checkpoint_corrupt(path, f"not a readable safetensors file ({exc})") from None


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(moelight state dict, the recipe as a dict when the source carries one) of `path`."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / ".metadata").is_file():
        # An expert-parallel checkpoint: read its single-file form (all experts, in order).
        p = consolidated_file(p)
    if p.is_dir():
        weights = p / MODEL_FILE
        if not weights.is_file():
            raise MoelightError(f"{p}: no {MODEL_FILE} (expected a `moelight convert import` directory)")
        recipe = None
        if (p / RECIPE_FILE).is_file():
            recipe = read_recipe_dict(p / RECIPE_FILE)
        return _load_safetensors(weights), recipe
    if not p.is_file():
        raise MoelightError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        return _load_safetensors(p), None
    if p.suffix in (".ckpt", ".pt", ".pth"):
        check_checkpoint_file(p)
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # torch's own text would advise unsafe loading (weights_only=False)
            raise checkpoint_corrupt(p, "not a readable torch checkpoint") from None
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise MoelightError(f"{p}: not a Lightning checkpoint (no state_dict)")
        state = {k[len(CKPT_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(CKPT_PREFIX)}
        if not state:
            raise MoelightError(
                f"{p}: its state_dict has no '{CKPT_PREFIX}*' weights (not a moelight checkpoint)"
            )
        recipe = (ckpt.get("hyper_parameters") or {}).get("recipe")
        return state, recipe if isinstance(recipe, dict) else None
    raise MoelightError(
        f"{p}: unknown checkpoint type {p.suffix!r} (expected a converted directory, .safetensors or .ckpt)"
    )


def _select_local_experts(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rows of this rank's experts when the file holds more experts than the module (expert parallelism)."""
    out = dict(state)
    for prefix, module in model.named_modules():
        if not isinstance(module, ExpertWeights):
            continue
        for name in ("w1", "v1", "w2"):
            key = f"{prefix}.{name}" if prefix else name
            t = out.get(key)
            if t is None or t.dim() != 3 or t.shape[0] == module.num_local:
                continue
            if max(module.global_ids) < t.shape[0]:
                out[key] = t[torch.tensor(module.global_ids)]
    return out


def load_init_weights(model: nn.Module, path: str) -> None:
    """Copy the weights at `path` into `model`, strictly: every parameter must be present with its
    shape, and nothing may be left over. Missing buffers (e.g. a balancing router's running bias)
    keep their initial values."""
    state, _ = read_checkpoint(path)
    state = _select_local_experts(model, state)
    own = model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    missing = [k for k in own if k not in state and k in params]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} weight(s): {first_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weight(s): {first_names(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {first_names(mismatched, 3)}")
    if problems:
        raise MoelightError(
            f"model.init_from {path}: the weights do not fit the recipe's model ({'; '.join(problems)})"
        )
    to_load = {k: v for k, v in state.items() if k in own}
    # A model built on the meta device has no storage to copy into: take the tensors instead.
    on_meta = any(t.is_meta for t in own.values())
    if on_meta:
        to_load = {k: v.to(own[k].dtype) for k, v in to_load.items()}
    model.load_state_dict(to_load, strict=False, assign=on_meta)
