"""Import: a local HF MoE checkpoint -> moelight ModelConfig, router section and state dict.

Reads config.json and the safetensors files directly (never the in-memory transformers modules, which
fuse the experts) and checks every tensor against the shape the converted ModelConfig implies."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moelight.errors import MoelightError
from moelight.hf.architecture import Architecture, Entry
from moelight.hf.architectures import get_architecture
from moelight.hf.checkpoint_dir import HFCheckpoint
from moelight.hf.config_fields import validate_model
from moelight.hf.name_table import expected_shapes, fmt_shape, weight_map
from moelight.model.init_from import first_names
from moelight.recipe import ModelConfig

IGNORED_HF = re.compile(r".*\.rotary_emb\.inv_freq$")


@dataclass
class Imported:
    arch: Architecture
    model: ModelConfig
    router: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    notes: list[str]
    collaborators: list | None = None  # a C2R checkpoint's lists, written as the recipe's profile


def _read_entry(ckpt: HFCheckpoint, entry: Entry, expected: tuple[int, ...]) -> torch.Tensor:
    source = ckpt.path
    if not entry.stacked:
        (key,) = entry.hf
        shape = ckpt.shape(key)
        if shape != expected:
            raise MoelightError(
                f"{source}: shape mismatch: {key} is {fmt_shape(shape)}, but config.json implies {fmt_shape(expected)} "
                f"(moelight {entry.ours})"
            )
        return ckpt.get(key)
    per_expert = expected[1:]
    if ckpt.has(entry.hf[0]) or entry.fused is None or not ckpt.has(entry.fused[0]):
        parts = []
        for key in entry.hf:
            shape = ckpt.shape(key)
            if shape != per_expert:
                raise MoelightError(
                    f"{source}: shape mismatch: {key} is {fmt_shape(shape)}, but config.json implies "
                    f"{fmt_shape(per_expert)} per expert (moelight {entry.ours} {fmt_shape(expected)})"
                )
            parts.append(ckpt.get(key))
        return torch.stack(parts)
    # The fused transformers-5 layout: gate_up_proj [E, 2*ffn, d] (gate rows first), down_proj [E, d, ffn].
    key, part = entry.fused
    shape = ckpt.shape(key)
    want = (expected[0], 2 * expected[1], expected[2]) if part != "down" else expected
    if shape != want:
        raise MoelightError(
            f"{source}: shape mismatch: {key} is {fmt_shape(shape)}, but config.json implies {fmt_shape(want)}"
        )
    tensor = ckpt.get(key)
    if part == "down":
        return tensor
    ffn = expected[1]
    return (tensor[:, :ffn] if part == "gate" else tensor[:, ffn:]).contiguous()


def import_hf(hf_dir: str | Path) -> Imported:
    """Read a local HF MoE checkpoint into a moelight ModelConfig, router section and state dict."""
    ckpt = HFCheckpoint.open(hf_dir)
    model_type = ckpt.config.get("model_type")
    arch = get_architecture(model_type, f"{ckpt.path}/config.json model_type")
    fields, router, notes = arch.to_moelight(ckpt.config)
    model = validate_model(fields, str(ckpt.path))
    shapes = expected_shapes(model, arch.shape_router(router))
    entries = weight_map(model, arch, router)

    # All missing tensors at once: a wrong config usually misses many, and the list says which.
    missing = []
    for e in entries:
        fused_ok = e.fused is not None and ckpt.has(e.fused[0])
        if not fused_ok:
            missing += [k for k in e.hf if not ckpt.has(k)]
    if missing:
        raise MoelightError(
            f"{ckpt.path}: missing weights for the architecture config.json describes: {first_names(missing)}"
        )

    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for e in entries:
        if e.ours not in shapes:  # a name-table bug, not a user error
            raise AssertionError(f"weight_map names {e.ours}, which the moelight model does not have")
        state[e.ours] = _read_entry(ckpt, e, shapes[e.ours])
        used.update(e.hf)
        if e.fused is not None:
            used.add(e.fused[0])
    not_mapped = sorted(set(shapes) - set(state))
    if not_mapped:
        raise AssertionError(f"weight_map misses moelight tensors {not_mapped[:5]}")

    ignorable = {"lm_head.weight"} if model.tie_embeddings else set()
    unexpected = [k for k in ckpt.files if k not in used and k not in ignorable and not IGNORED_HF.match(k)]
    if unexpected:
        raise MoelightError(
            f"{ckpt.path}: tensors the config.json does not account for: {first_names(sorted(unexpected))} "
            "(is config.json from the same model?)"
        )
    return Imported(arch, model, router, state, notes, arch.collaborator_lists(ckpt.config))
