"""OLMoE: softmax top-k (renormalised when `norm_topk_prob`), QK-norm (an RMSNorm over the full q
and k projections, before the head split: `model.qk_norm`), no shared expert, every layer MoE.
"""

from __future__ import annotations

from typing import Any

from moelight.errors import MoelightError
from moelight.hf.architecture import Architecture
from moelight.hf.config_fields import (
    aux_coef_to_hf,
    aux_coef_to_moelight,
    blocker,
    common_hf_fields,
    every_layer_moe_fields,
    every_layer_moe_problems,
    head_dim_problem,
    present,
    refuse_unexportable,
)
from moelight.hf.router_swap import topk_router_of, topk_router_problems
from moelight.recipe import ModelConfig


class Olmoe(Architecture):
    name = "olmoe"
    hf_class = "OlmoeForCausalLM"

    def to_moelight(self, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        src = "olmoe config.json"
        if cfg.get("attention_bias"):
            raise MoelightError(
                f"{src}: attention_bias: true is not supported (moelight's output projection has no bias)"
            )
        if cfg.get("clip_qkv") is not None:
            raise MoelightError(f"{src}: clip_qkv ({cfg['clip_qkv']}) is not supported")
        fields = every_layer_moe_fields(
            cfg, src, rope_default=10000.0, experts_key="num_experts", qk_norm=True
        )
        k = fields["top_k"]
        router = {
            "name": "topk",
            "score": "softmax",
            "renormalize": bool(cfg.get("norm_topk_prob", False)),
            "aux_loss_coef": aux_coef_to_moelight(
                cfg.get("router_aux_loss_coef", 0.01), k, fields["n_layers"]
            ),
            "z_loss_coef": 0.0,
        }
        return fields, router, []

    def blockers(self, model: ModelConfig, router: dict[str, Any]) -> list[str]:
        problems = {
            blocker("no QK-norm", "OLMoE normalises q and k", "model.qk_norm=true"): not model.qk_norm,
            blocker(
                "model.qkv_bias: true",
                "OLMoE's attention_bias would also bias the output projection",
                "model.qkv_bias=false",
            ): model.qkv_bias,
        }
        problems |= every_layer_moe_problems(model, "OLMoE") | head_dim_problem(model)
        return present(problems) + topk_router_problems(router, self.name, model.top_k)

    def to_hf(self, model: ModelConfig, router: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        arch = self.name
        refuse_unexportable(arch, self.blockers(model, router))
        values, warnings = topk_router_of(router, arch, model.top_k)
        config = common_hf_fields(model) | {
            "intermediate_size": model.expert_ffn_hidden_size,
            "num_experts": model.num_experts,
            "num_experts_per_tok": model.top_k,
            "norm_topk_prob": bool(values["renormalize"]),
            "attention_bias": False,
            "clip_qkv": None,
            "router_aux_loss_coef": aux_coef_to_hf(values["aux_loss_coef"], model.top_k, model.n_layers),
            "output_router_logits": False,
        }
        return config, warnings
