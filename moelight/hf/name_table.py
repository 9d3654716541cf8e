"""The shared name table: every moelight tensor with its Hugging Face source, and the shapes a model implies.

All supported architectures are Llama-style decoders; an `Architecture` supplies the MoE block's names."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from moelight.hf.architecture import Architecture, Entry
from moelight.model.build import build_model, layer_contexts
from moelight.recipe import ModelConfig, Recipe


def weight_map(model: ModelConfig, arch: Architecture, router: dict[str, Any] | None = None) -> list[Entry]:
    """Every tensor of the moelight model (all experts) with its HF source, in model order."""
    entries = [Entry("embed.weight", ("model.embed_tokens.weight",))]
    linears = ["q_proj", "k_proj", "v_proj", "o_proj"]
    for i in range(model.n_layers):
        hf, ours = f"model.layers.{i}", f"blocks.{i}"
        entries.append(Entry(f"{ours}.attn_norm.weight", (f"{hf}.input_layernorm.weight",)))
        for name in linears:
            entries.append(Entry(f"{ours}.attn.{name}.weight", (f"{hf}.self_attn.{name}.weight",)))
            if model.qkv_bias and name != "o_proj":
                entries.append(Entry(f"{ours}.attn.{name}.bias", (f"{hf}.self_attn.{name}.bias",)))
        if model.qk_norm:
            for name in ("q_norm", "k_norm"):
                entries.append(Entry(f"{ours}.attn.{name}.weight", (f"{hf}.self_attn.{name}.weight",)))
        entries.append(Entry(f"{ours}.ffn_norm.weight", (f"{hf}.post_attention_layernorm.weight",)))
        if model.is_moe_layer(i):
            mlp = f"{hf}.{arch.moe_module}"
            entries += arch.router_entries(mlp, f"{ours}.ffn", router)
            for param, hf_name, part in zip(
                ("w1", "v1", "w2"), arch.expert_names, ("gate", "up", "down"), strict=True
            ):
                per_expert = tuple(arch.expert_key(mlp, hf_name, e) for e in range(model.num_experts))
                fused_key = f"{mlp}.experts.{'down_proj' if part == 'down' else 'gate_up_proj'}"
                fused = (fused_key, part) if arch.fused_experts else None
                entries.append(Entry(f"{ours}.ffn.experts.{param}", per_expert, fused))
            if model.shared_expert_ffn_hidden_size:
                for name in ("gate_proj", "up_proj", "down_proj"):
                    entries.append(
                        Entry(
                            f"{ours}.ffn.shared_expert.{name}.weight", (f"{mlp}.shared_expert.{name}.weight",)
                        )
                    )
                if model.shared_expert_gate:
                    entries.append(
                        Entry(f"{ours}.ffn.shared_expert_gate.weight", (f"{mlp}.shared_expert_gate.weight",))
                    )
        else:
            for name in ("gate_proj", "up_proj", "down_proj"):
                entries.append(Entry(f"{ours}.ffn.{name}.weight", (f"{hf}.mlp.{name}.weight",)))
    entries.append(Entry("norm.weight", ("model.norm.weight",)))
    if not model.tie_embeddings:
        entries.append(Entry("lm_head.weight", ("lm_head.weight",)))
    return entries


def expected_shapes(model: ModelConfig, router: dict[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """The moelight state-dict shapes `model` (and the router's gate) imply (all experts), from a
    model on the meta device."""
    recipe = Recipe(model=model, router=router or {"name": "topk"})
    contexts = layer_contexts(recipe)
    with torch.device("meta"):
        built = build_model(recipe, contexts=contexts)
    return {k: tuple(v.shape) for k, v in built.state_dict().items()}


def fmt_shape(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"
