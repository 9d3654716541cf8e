"""What differs between Hugging Face MoE architectures (`Architecture`), and one name-table row (`Entry`).

Each architecture is a subclass in its own module; `architectures.py` lists them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from moelight.recipe import ModelConfig


@dataclass(frozen=True)
class Entry:
    """One moelight tensor and the HF tensor(s) it comes from.

    One HF key: copied as is. Several: the per-expert tensors, stacked along a new dim 0 in
    expert order. `fused`: the transformers-5 in-memory layout (`experts.gate_up_proj` /
    `experts.down_proj`), accepted on import when the per-expert tensors are absent.
    """

    ours: str
    hf: tuple[str, ...]
    fused: tuple[str, str] | None = None  # (hf key, "gate" | "up" | "down")

    @property
    def stacked(self) -> bool:
        return len(self.hf) > 1 or self.fused is not None


class Architecture:
    """What differs between HF MoE architectures. Subclasses live in one module each."""

    name: str  # the config.json `model_type`
    hf_class: str  # the config.json `architectures` entry
    moe_module: str = "mlp"  # `model.layers.{i}.<moe_module>.gate / .experts.{j}...`
    expert_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")  # w1, v1, w2

    def to_moelight(self, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        """HF config -> (ModelConfig fields, router section, notes for the user)."""
        raise NotImplementedError

    def to_hf(self, model: ModelConfig, router: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """moelight model + router -> (config.json fields, warnings); MoelightError if inexpressible."""
        raise NotImplementedError

    def blockers(self, model: ModelConfig, router: dict[str, Any]) -> list[str]:
        """Everything that keeps this model from being exported as this architecture, each with the
        recipe change that removes it (`config_fields.blocker`); empty when it exports."""
        raise NotImplementedError

    def prepare_export(
        self, model: ModelConfig, state: dict[str, torch.Tensor]
    ) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
        """Adjust model and tensors to what the HF class always builds (e.g. zero biases)."""
        return model, state

    def router_entries(self, mlp: str, ours: str, router: dict[str, Any] | None) -> list[Entry]:
        """The router's tensors of one MoE layer (`mlp`: its HF prefix, `ours`: `blocks.{i}.ffn`)."""
        return [Entry(f"{ours}.router.gate.weight", (f"{mlp}.gate.weight",))]

    def collaborator_lists(self, cfg: dict[str, Any]) -> list | None:
        """Collaborator lists [layers][E][E] a C2R checkpoint's config.json carries for its router."""
        return None

    def shape_router(self, router: dict[str, Any] | None) -> dict[str, Any]:
        """A router section with the same parameter names as `router`, buildable without a profile."""
        return {"name": "topk"}

    def expert_key(self, mlp: str, hf_name: str, expert: int) -> str:
        return f"{mlp}.experts.{expert}.{hf_name}.weight"

    fused_experts: bool = True  # transformers-5 fused `experts.gate_up_proj` accepted on import
