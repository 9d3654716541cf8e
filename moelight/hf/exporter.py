"""Export: a moelight state dict -> the Hugging Face hub layout (config.json + one tensor per expert)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from moelight.checkpoint.file_mode import as_user_writes
from moelight.errors import MoelightError, first_names
from moelight.hf.architecture import Architecture
from moelight.hf.architectures import architectures, get_architecture
from moelight.hf.checkpoint_dir import WEIGHTS_NAME
from moelight.hf.name_table import expected_shapes, fmt_shape, weight_map
from moelight.recipe import ModelConfig


def export_state_dict(
    state: dict[str, torch.Tensor],
    model: ModelConfig,
    arch: Architecture,
    dtype: torch.dtype | None = None,
    router: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """moelight state dict (all experts) -> HF tensors in the hub layout, shapes checked."""
    shapes = expected_shapes(model, arch.shape_router(router))
    entries = weight_map(model, arch, router)
    wanted = {e.ours for e in entries}
    missing = [e.ours for e in entries if e.ours not in state]
    if missing:
        raise MoelightError(f"the checkpoint lacks tensors the model section implies: {first_names(missing)}")
    unexpected = sorted(set(state) - wanted)
    if unexpected:
        raise MoelightError(
            f"the checkpoint has tensors the model section does not: {first_names(unexpected)}"
        )
    out: dict[str, torch.Tensor] = {}
    for e in entries:
        t = state[e.ours]
        if tuple(t.shape) != shapes[e.ours]:
            raise MoelightError(
                f"shape mismatch: {e.ours} is {fmt_shape(t.shape)}, but the model section implies {fmt_shape(shapes[e.ours])}"
            )
        if dtype is not None:
            t = t.to(dtype)
        if e.stacked:
            for key, part in zip(e.hf, t.unbind(0), strict=True):
                out[key] = part.contiguous()
        else:
            out[e.hf[0]] = t.contiguous()
    return out


EXPORTABLE_RECIPE = "recipes/mixtral-exportable.yaml"


def refuse_blocked(arch: Architecture, model: ModelConfig, router: dict[str, Any]) -> None:
    """One error listing every blocker for `arch` with its fix, and what the other architectures
    would need (or that one of them takes the model as it is)."""
    blockers = arch.blockers(model, router)
    if not blockers:
        return
    numbered = "; ".join(f"({i}) {b}" for i, b in enumerate(blockers, 1))
    others = []
    for other in architectures().values():
        if other.name == arch.name:
            continue
        theirs = other.blockers(model, router)
        fixes = [b.rsplit("fix: ", 1)[-1].rstrip(")") for b in theirs]
        others.append(f"{other.name}: " + (" + ".join(fixes) if fixes else "exports as it is"))
    raise MoelightError(
        f"--arch {arch.name}: the model cannot be exported as {arch.name}: {numbered}. Other architectures "
        f"need: {'; '.join(others)}. A recipe that trains an exportable model: {EXPORTABLE_RECIPE} (Mixtral)"
    )


def export_hf(
    state: dict[str, torch.Tensor],
    model: ModelConfig,
    router: dict[str, Any],
    arch_name: str,
    out_dir: str | Path,
    dtype: torch.dtype | None = None,
    tokenizer_ids: dict[str, int] | None = None,
) -> list[str]:
    """Write config.json + model.safetensors (hub layout) for `arch_name`; returns warnings.
    `tokenizer_ids` (bos/eos/pad_token_id) also go into config.json and generation_config.json."""
    arch = get_architecture(arch_name, "--arch")
    refuse_blocked(arch, model, router)
    config, warnings = arch.to_hf(model, router)
    model, state = arch.prepare_export(model, state)
    tensors = export_state_dict(state, model, arch, dtype, router)
    first = next(iter(tensors.values()))
    config = {
        "architectures": [arch.hf_class],
        "model_type": arch.name,
        **config,
        "dtype": str(first.dtype).removeprefix("torch."),
        "torch_dtype": str(first.dtype).removeprefix("torch."),  # the transformers-4 spelling
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_ids:
        config |= tokenizer_ids
        generation = {"_from_model_config": True, **tokenizer_ids}
        (out / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    as_user_writes(out / WEIGHTS_NAME)  # safetensors creates it 0600
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return warnings
