"""Export: a moelight state dict -> the Hugging Face hub layout (config.json + one tensor per expert)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from moelight.errors import MoelightError
from moelight.hf.architecture import Architecture
from moelight.hf.architectures import get_architecture
from moelight.hf.checkpoint_dir import WEIGHTS_NAME
from moelight.hf.name_table import expected_shapes, fmt_shape, weight_map
from moelight.model.init_from import first_names
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


def export_hf(
    state: dict[str, torch.Tensor],
    model: ModelConfig,
    router: dict[str, Any],
    arch_name: str,
    out_dir: str | Path,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """Write config.json + model.safetensors (hub layout) for `arch_name`; returns warnings."""
    arch = get_architecture(arch_name, "--arch")
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
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return warnings
