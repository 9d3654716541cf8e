"""`model.init_from`: start a model from a converted model or a moelight checkpoint.

Accepted here: a `moelight convert import` directory (its `model.safetensors`), a `.safetensors` file
with moelight state-dict names, or a Lightning `.ckpt` whose `state_dict` keys are the training
module's (`model.` + moelight name), or a sharded expert-parallel checkpoint directory. Expert
tensors are stored for all experts (`[E, ...]`).

Loading is shard by shard: the model is built with its parameters on the meta device
(`moelight.model.meta_params`) and each parameter reads only the part of its stored tensor this
rank holds (`moelight.model.local_parts`: its experts' rows by global expert id, its FSDP2
chunk), one tensor at a time (`moelight.model.weight_sources`). So a rank's peak host memory is
its shard plus one tensor part, not the model. A Hugging Face directory is opened one layer up,
by `moelight.load.open_weights` (the `hf` package builds on this one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moelight.errors import MoelightError, first_names
from moelight.model.local_parts import is_dtensor, local_index
from moelight.model.weight_sources import Index, WeightSource, open_source
from moelight.moe.experts import named_expert_parameters
from moelight.recipe import read_recipe_dict

# The weight dtypes a user may name when loading a model (`moelight eval`, `moelight convert`).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

MODEL_FILE = "model.safetensors"
RECIPE_FILE = "recipe.yaml"


def open_checkpoint(path: str | Path) -> WeightSource:
    """A reader of the weights at `path` (nothing read yet), with the recipe it carries."""
    p = Path(path).expanduser()
    if p.is_dir() and not (p / ".metadata").is_file():
        weights = p / MODEL_FILE
        if not weights.is_file():
            raise MoelightError(f"{p}: no {MODEL_FILE} (expected a `moelight convert import` directory)")
        source = open_source(weights)
        if (p / RECIPE_FILE).is_file():
            source.recipe = read_recipe_dict(p / RECIPE_FILE)
        return source
    return open_source(p)  # a file, or a sharded expert-parallel directory


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(moelight state dict, the recipe as a dict when the source carries one) of `path`, whole:
    for single-process uses (eval, profile, export)."""
    with open_checkpoint(path) as source:
        return source.read_all(), source.recipe


def _expert_rows(model: nn.Module) -> dict[str, list[int]]:
    """State-dict name of every expert tensor -> the global ids of its rows."""
    return {name: list(owner.global_ids) for name, _, owner in named_expert_parameters(model)}


@dataclass
class _Part:
    name: str  # state-dict name, in the model and in the source
    target: torch.Tensor  # the parameter or buffer it fills (a DTensor for FSDP2)
    index: Index  # what to read of the stored tensor


def _plan(model: nn.Module, source: WeightSource, what: str) -> list[_Part]:
    """What each tensor of `model` reads from `source`; every mismatch at once, before reading."""
    own = model.state_dict(keep_vars=True)
    params = {name for name, _ in model.named_parameters()}
    stored = set(source.names())
    experts = _expert_rows(model)
    missing = [k for k in own if k not in stored and k in params]
    unexpected = [k for k in source.names() if k not in own]
    mismatched, parts = [], []
    for name, target in own.items():
        if name not in stored:
            continue
        shape = source.shape(name)
        rows = experts.get(name)
        # A stored expert tensor holds all experts (or exactly this module's, e.g. at P=1).
        if rows is not None and shape and shape[0] != len(rows) and max(rows, default=-1) < shape[0]:
            shape = (len(rows), *shape[1:])
        else:
            rows = None
        if tuple(shape) != tuple(target.shape):
            mismatched.append(f"{name} {list(source.shape(name))} vs model {list(target.shape)}")
            continue
        parts.append(_Part(name, target, local_index(target, rows)))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} weight(s): {first_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weight(s): {first_names(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {first_names(mismatched, 3)}")
    if problems:
        raise MoelightError(f"{what}: the weights do not fit the recipe's model ({'; '.join(problems)})")
    return parts


def _local_shape(index: Index) -> tuple[int, ...]:
    return tuple(len(i) if not isinstance(i, slice) else i.stop - i.start for i in index)


def _read_part(source: WeightSource, part: _Part, dtype: torch.dtype) -> torch.Tensor:
    shape = _local_shape(part.index)
    if 0 in shape:  # an empty chunk (more ranks than rows)
        return torch.empty(shape, dtype=dtype)
    return source.read(part.name, part.index if part.index else None).to(dtype)


@torch.no_grad()
def _fill(model: nn.Module, part: _Part, value: torch.Tensor) -> None:
    """Copy into the target's storage, or, when it is on the meta device, put `value` in its place."""
    target = part.target
    local = target.to_local() if is_dtensor(target) else target
    if not local.is_meta:
        local.copy_(value)
        return
    if is_dtensor(target):
        from torch.distributed.tensor import DTensor

        value = DTensor.from_local(
            value,
            target.device_mesh,
            target.placements,
            run_check=False,
            shape=target.shape,
            stride=target.stride(),
        )
    owner_name, _, leaf = part.name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if isinstance(target, nn.Parameter):
        value = nn.Parameter(value, requires_grad=target.requires_grad)
    setattr(owner, leaf, value)


def load_weights(model: nn.Module, source: WeightSource, what: str) -> None:
    """Fill `model` from `source`, strictly, one tensor part at a time (see the module docstring)."""
    for part in _plan(model, source, what):
        _fill(model, part, _read_part(source, part, part.target.dtype))
