"""Layer shapes to benchmark: named presets and how to override them from the command line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from moelight.errors import MoelightError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class LayerShape:
    """One MoE layer's problem size: T tokens of width d, E experts of width ffn, top-k."""

    tokens: int
    hidden: int
    ffn: int
    experts: int
    top_k: int
    dtype: str = "fp32"
    layers: int = 1  # MoE layers of the whole model (used by the all2all projection)
    description: str = ""

    @property
    def torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.dtype)

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, LayerShape] = {
    "cpu-tiny": LayerShape(256, 64, 128, 4, 2, "fp32", 1, "test-sized; runs in milliseconds"),
    "cpu-small": LayerShape(2048, 256, 512, 8, 2, "fp32", 4, "LLaMA-MoE's 8 experts, top-2, scaled down"),
    "cpu-many": LayerShape(2048, 256, 256, 60, 4, "fp32", 4, "Qwen1.5-MoE's 60 experts, top-4, scaled down"),
    "llama-moe-3.5b": LayerShape(16384, 4096, 1376, 8, 2, "bf16", 32, "LLaMA-MoE-v1-3.5B (2 of 8)"),
    "qwen1.5-moe-a2.7b": LayerShape(16384, 2048, 1408, 60, 4, "bf16", 24, "Qwen1.5-MoE-A2.7B (4 of 60)"),
}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise MoelightError(f"unknown dtype {name!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def get_preset(name: str) -> LayerShape:
    if name not in PRESETS:
        raise MoelightError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]


def shape_from(preset: str, **overrides: int | str | None) -> LayerShape:
    """A preset with any non-None field replaced; checks that the shape is a valid MoE layer."""
    shape = replace(get_preset(preset), **{k: v for k, v in overrides.items() if v is not None})
    parse_dtype(shape.dtype)
    for field in ("tokens", "hidden", "ffn", "experts", "top_k", "layers"):
        if getattr(shape, field) <= 0:
            raise MoelightError(f"--{field.replace('_', '-')} must be positive, got {getattr(shape, field)}")
    if shape.top_k > shape.experts:
        raise MoelightError(f"--top-k ({shape.top_k}) must be <= --experts ({shape.experts})")
    return shape
