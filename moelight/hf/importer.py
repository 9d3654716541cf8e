"""Import: a local HF MoE checkpoint -> moelight ModelConfig, router section and state dict.

Reads config.json and the safetensors files directly (never the in-memory transformers modules, which
fuse the experts) and checks every tensor against the shape the converted ModelConfig implies.
`HFSource` converts part by part as tensors are read, so `model.init_from` can start a model from
an HF directory reading only each rank's experts; `import_hf` reads it whole for `convert import`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moelight.errors import MoelightError, first_names
from moelight.hf.architecture import Architecture, Entry
from moelight.hf.architectures import get_architecture
from moelight.hf.checkpoint_dir import HFCheckpoint
from moelight.hf.config_fields import validate_model
from moelight.hf.name_table import expected_shapes, fmt_shape, weight_map
from moelight.model.weight_sources import Index, WeightSource, full_index
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


def _check_entry(ckpt: HFCheckpoint, entry: Entry, expected: tuple[int, ...]) -> None:
    """Every HF tensor `entry` reads has the shape config.json implies (read from the headers)."""
    source = ckpt.path
    if not entry.stacked:
        (key,) = entry.hf
        shape = ckpt.shape(key)
        if shape != expected:
            raise MoelightError(
                f"{source}: shape mismatch: {key} is {fmt_shape(shape)}, but config.json implies {fmt_shape(expected)} "
                f"(moelight {entry.ours})"
            )
        return
    per_expert = expected[1:]
    if _per_expert_layout(ckpt, entry):
        for key in entry.hf:
            shape = ckpt.shape(key)
            if shape != per_expert:
                raise MoelightError(
                    f"{source}: shape mismatch: {key} is {fmt_shape(shape)}, but config.json implies "
                    f"{fmt_shape(per_expert)} per expert (moelight {entry.ours} {fmt_shape(expected)})"
                )
        return
    key, part = entry.fused
    shape = ckpt.shape(key)
    want = (expected[0], 2 * expected[1], expected[2]) if part != "down" else expected
    if shape != want:
        raise MoelightError(
            f"{source}: shape mismatch: {key} is {fmt_shape(shape)}, but config.json implies {fmt_shape(want)}"
        )


def _per_expert_layout(ckpt: HFCheckpoint, entry: Entry) -> bool:
    return ckpt.has(entry.hf[0]) or entry.fused is None or not ckpt.has(entry.fused[0])


def read_entry(
    ckpt: HFCheckpoint, entry: Entry, expected: tuple[int, ...], index: Index | None = None
) -> torch.Tensor:
    """moelight tensor `entry.ours` (shape `expected`), or its part `index`, from the HF tensors:
    per-expert tensors stacked (only the experts `index` asks for are read), the fused
    transformers-5 `gate_up_proj` split (only the gate or up half is read)."""
    index = full_index(expected) if index is None else index
    if not entry.stacked:
        (key,) = entry.hf
        return ckpt.read(key, index)
    if _per_expert_layout(ckpt, entry):
        first = index[0]
        experts = range(expected[0])[first] if isinstance(first, slice) else first
        parts = [ckpt.read(entry.hf[e], tuple(index[1:])) for e in experts]
        return torch.stack(parts) if parts else torch.empty(0, *expected[1:])
    # The fused transformers-5 layout: gate_up_proj [E, 2*ffn, d] (gate rows first), down_proj [E, d, ffn].
    key, part = entry.fused
    if part != "up":
        return ckpt.read(key, index)
    rows = index[1]
    ffn = expected[1]
    return ckpt.read(key, (index[0], slice(rows.start + ffn, rows.stop + ffn), *index[2:]))


class HFSource(WeightSource):
    """A local HF MoE checkpoint as moelight tensors, converted part by part as they are read.

    Opening checks everything (architecture, config, every tensor's presence and shape, tensors
    left over) from config.json and the safetensors headers, and reads no tensor."""

    def __init__(self, hf_dir: str | Path):
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
        used: set[str] = set()
        for e in entries:
            if e.ours not in shapes:  # a name-table bug, not a user error
                raise AssertionError(f"weight_map names {e.ours}, which the moelight model does not have")
            _check_entry(ckpt, e, shapes[e.ours])
            used.update(e.hf)
            if e.fused is not None:
                used.add(e.fused[0])
        not_mapped = sorted(set(shapes) - {e.ours for e in entries})
        if not_mapped:
            raise AssertionError(f"weight_map misses moelight tensors {not_mapped[:5]}")

        ignorable = {"lm_head.weight"} if model.tie_embeddings else set()
        unexpected = [
            k for k in ckpt.files if k not in used and k not in ignorable and not IGNORED_HF.match(k)
        ]
        if unexpected:
            raise MoelightError(
                f"{ckpt.path}: tensors the config.json does not account for: {first_names(sorted(unexpected))} "
                "(is config.json from the same model?)"
            )
        self.path, self.ckpt, self.arch, self.model, self.router, self.notes = (
            ckpt.path,
            ckpt,
            arch,
            model,
            router,
            notes,
        )
        self._entries = {e.ours: e for e in entries}
        self._shapes = {e.ours: shapes[e.ours] for e in entries}
        self.recipe = {"model": model.model_dump(mode="json"), "router": router}

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def read(self, name: str, index: Index | None = None) -> torch.Tensor:
        return read_entry(self.ckpt, self._entries[name], self._shapes[name], index)


def import_hf(hf_dir: str | Path) -> Imported:
    """Read a local HF MoE checkpoint into a moelight ModelConfig, router section and state dict."""
    source = HFSource(hf_dir)
    state = source.read_all()
    return Imported(
        source.arch,
        source.model,
        source.router,
        state,
        source.notes,
        source.arch.collaborator_lists(source.ckpt.config),
    )
