"""A trained moelight model ready to score text: weights, the router it was trained with, tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from moelight.data.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer
from moelight.errors import MoelightError
from moelight.load import load_checkpoint
from moelight.model.init_from import DTYPES
from moelight.recipe import Recipe


@dataclass
class EvalModel:
    recipe: Recipe
    model: torch.nn.Module
    tokenizer: ByteTokenizer | HFTokenizer
    source: str
    device: torch.device
    dtype: torch.dtype


def pick_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MoelightError(f"device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MoelightError(f"device {device!r}: CUDA is not available here (use auto or cpu)")
    return dev


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 elsewhere, unless asked otherwise."""
    if dtype in (None, "", "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise MoelightError(f"dtype {dtype!r}: allowed: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_eval_model(
    checkpoint: str | Path,
    recipe: str | Path | None = None,
    overrides: list[str] | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> EvalModel:
    """A checkpoint (.ckpt, sharded expert-parallel directory, converted directory) with the router
    of its recipe (C2R stays C2R), all experts in this process, in eval mode on `device`."""
    loaded = load_checkpoint(checkpoint, overrides, recipe_path=recipe)
    tokenizer = load_tokenizer(loaded.recipe.data.tokenizer)
    if tokenizer.vocab_size > loaded.recipe.model.vocab_size:
        raise MoelightError(
            f"{checkpoint}: the tokenizer {loaded.recipe.data.tokenizer!r} has {tokenizer.vocab_size} "
            f"tokens but the model's vocab_size is {loaded.recipe.model.vocab_size}"
        )
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    model = loaded.model.to(device=dev, dtype=dt).eval()
    return EvalModel(loaded.recipe, model, tokenizer, str(checkpoint), dev, dt)
