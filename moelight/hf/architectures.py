"""The Hugging Face MoE architectures `moelight convert` knows, by config.json `model_type`."""

from __future__ import annotations

from moelight.errors import MoelightError
from moelight.hf.architecture import Architecture
from moelight.hf.llama_moe import LlamaMoe
from moelight.hf.mixtral import Mixtral
from moelight.hf.olmoe import Olmoe
from moelight.hf.qwen2_moe import Qwen2Moe


def architectures() -> dict[str, Architecture]:

    return {a.name: a for a in (Qwen2Moe(), Mixtral(), Olmoe(), LlamaMoe())}


def get_architecture(name: str | None, where: str = "") -> Architecture:
    archs = architectures()
    if name not in archs:
        what = f"{where}: " if where else ""
        raise MoelightError(
            f"{what}unsupported architecture {name!r}; supported: {', '.join(archs)} "
            "(Qwen2-MoE / Qwen1.5-MoE, Mixtral, OLMoE, LLaMA-MoE v1)"
        )
    return archs[name]
