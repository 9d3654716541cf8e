"""Mixtral: softmax top-k with the k weights always renormalised, no shared expert, every layer MoE.

Hub tensors live under `block_sparse_moe` with experts `w1` (gate), `w3` (up), `w2` (down).
Mixtral's optional sliding attention window is not implemented: for sequences of at most
`sliding_window` tokens full causal attention is the same computation, so the import is exact
there; the import notes say so and an export writes `sliding_window: null` (what moelight computes).
"""

from __future__ import annotations

from typing import Any

from moelight.hf.architecture import Architecture
from moelight.hf.config_fields import (
    aux_coef_to_hf,
    aux_coef_to_moelight,
    common_hf_fields,
    every_layer_moe_fields,
    every_layer_moe_problems,
    plain_attention_problems,
    present,
    refuse_unexportable,
)
from moelight.hf.router_swap import topk_router_of, topk_router_problems
from moelight.recipe import ModelConfig


class Mixtral(Architecture):
    name = "mixtral"
    hf_class = "MixtralForCausalLM"
    moe_module = "block_sparse_moe"
    expert_names = ("w1", "w3", "w2")

    def to_moelight(self, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        src = "mixtral config.json"
        fields = every_layer_moe_fields(
            cfg, src, rope_default=1e6, experts_key="num_local_experts", qk_norm=False
        )
        k = fields["top_k"]
        jitter = float(cfg.get("router_jitter_noise") or 0.0)
        router = {
            "name": "topk",
            "score": "softmax",
            "renormalize": True,
            "aux_loss_coef": aux_coef_to_moelight(
                cfg.get("router_aux_loss_coef", 0.001), k, fields["n_layers"]
            ),
            "z_loss_coef": 0.0,
            "jitter": jitter,
        }
        notes = []
        window = cfg.get("sliding_window")
        if window:
            notes.append(
                f"Mixtral's sliding attention window ({window} tokens) is not implemented: the imported "
                f"model equals the HF one for sequences of at most {window} tokens (keep data.seq_len <= {window})"
            )
        if jitter:
            notes.append(
                "router_jitter_noise is mapped to router.jitter, which perturbs only the router's input "
                "(Mixtral also perturbs the experts' input); training only"
            )
        return fields, router, notes

    def blockers(self, model: ModelConfig, router: dict[str, Any]) -> list[str]:
        problems = present(
            plain_attention_problems(model, "Mixtral") | every_layer_moe_problems(model, "Mixtral")
        )
        return problems + topk_router_problems(router, self.name, model.top_k, renormalize_fixed=True)

    def to_hf(self, model: ModelConfig, router: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        arch = self.name
        refuse_unexportable(arch, self.blockers(model, router))
        values, warnings = topk_router_of(router, arch, model.top_k, renormalize_fixed=True)
        config = common_hf_fields(model) | {
            "intermediate_size": model.expert_ffn_hidden_size,
            "num_local_experts": model.num_experts,
            "num_experts_per_tok": model.top_k,
            "sliding_window": None,
            "router_jitter_noise": float(values.get("jitter", 0.0)),
            "router_aux_loss_coef": aux_coef_to_hf(values["aux_loss_coef"], model.top_k, model.n_layers),
            "output_router_logits": False,
        }
        return config, warnings
