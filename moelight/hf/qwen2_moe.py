"""Qwen2-MoE (Qwen1.5-MoE): softmax top-k router with optional renormalisation (`norm_topk_prob`),
a sigmoid-gated shared expert in every MoE layer, q/k/v biases, and dense layers placed by
`decoder_sparse_step` / `mlp_only_layers` (mapped to `model.moe_every` where that can express them).
"""

from __future__ import annotations

from typing import Any

import torch

from moelight.errors import MoelightError
from moelight.hf.architecture import Architecture
from moelight.hf.config_fields import (
    aux_coef_to_hf,
    aux_coef_to_moelight,
    blocker,
    common_hf_fields,
    common_model_fields,
    head_dim_problem,
    present,
    refuse_unexportable,
    require,
)
from moelight.hf.router_swap import topk_router_of, topk_router_problems
from moelight.recipe import ModelConfig, moe_layer_indices


class Qwen2Moe(Architecture):
    name = "qwen2_moe"
    hf_class = "Qwen2MoeForCausalLM"

    def to_moelight(self, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        src = "qwen2_moe config.json"
        fields = common_model_fields(cfg, src, rope_default=10000.0)
        n_layers, k = fields["n_layers"], require(cfg, "num_experts_per_tok", src)
        num_experts = int(cfg.get("num_experts") or 0)
        if num_experts <= 0:
            raise MoelightError(f"{src}: num_experts is {num_experts}: not an MoE model")
        step = int(cfg.get("decoder_sparse_step") or 1)
        mlp_only = sorted(cfg.get("mlp_only_layers") or [])
        hf_moe = [i for i in range(n_layers) if i not in mlp_only and (i + 1) % step == 0]
        if not hf_moe:
            raise MoelightError(f"{src}: decoder_sparse_step/mlp_only_layers leave no MoE layer")
        # moelight places an MoE FFN every n-th layer; any HF layout that equals one such n is fine.
        every = next((n for n in range(1, n_layers + 1) if moe_layer_indices(n_layers, n) == hf_moe), None)
        if every is None:
            raise MoelightError(
                f"{src}: unsupported MoE layer layout: decoder_sparse_step={step}, mlp_only_layers={mlp_only} "
                f"make layers {hf_moe} MoE; moelight supports an MoE layer every n-th layer only "
                "(model.moe_every: layers n-1, 2n-1, ...)"
            )
        shared = int(require(cfg, "shared_expert_intermediate_size", src))
        if shared <= 0:
            raise MoelightError(
                f"{src}: shared_expert_intermediate_size {shared} is not supported (must be > 0)"
            )
        fields.update(
            ffn_hidden_size=require(cfg, "intermediate_size", src),
            num_experts=num_experts,
            top_k=k,
            expert_ffn_hidden_size=require(cfg, "moe_intermediate_size", src),
            moe_every=every,
            shared_expert_ffn_hidden_size=shared,
            shared_expert_gate=True,
            qkv_bias=bool(cfg.get("qkv_bias", True)),
            qk_norm=False,
        )
        router = {
            "name": "topk",
            "score": "softmax",
            "renormalize": bool(cfg.get("norm_topk_prob", False)),
            "aux_loss_coef": aux_coef_to_moelight(cfg.get("router_aux_loss_coef", 0.001), k, len(hf_moe)),
            "z_loss_coef": 0.0,
        }
        notes = []
        if cfg.get("use_sliding_window"):
            window = cfg.get("sliding_window")
            notes.append(
                f"config.json enables a sliding attention window ({window} tokens) that moelight does not "
                f"implement: the imported model equals the HF one for sequences of at most {window} tokens "
                "(keep data.seq_len within it)"
            )
        return fields, router, notes

    def blockers(self, model: ModelConfig, router: dict[str, Any]) -> list[str]:
        width = model.shared_expert_ffn_hidden_size or model.expert_ffn_hidden_size * model.top_k
        problems = {
            blocker("model.qk_norm: true", "Qwen2-MoE has no QK-norm", "model.qk_norm=false"): model.qk_norm,
            blocker(
                "no gated shared expert",
                "Qwen2-MoE has one in every MoE layer",
                f"model.shared_expert_ffn_hidden_size={width} model.shared_expert_gate=true",
            ): not (model.shared_expert_ffn_hidden_size and model.shared_expert_gate),
        }
        problems |= head_dim_problem(model)
        return present(problems) + topk_router_problems(router, self.name, model.top_k)

    def to_hf(self, model: ModelConfig, router: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        arch = self.name
        refuse_unexportable(arch, self.blockers(model, router))
        values, warnings = topk_router_of(router, arch, model.top_k)
        n_moe = len(model.moe_layers)
        config = common_hf_fields(model) | {
            "intermediate_size": model.ffn_hidden_size,
            "moe_intermediate_size": model.expert_ffn_hidden_size,
            "shared_expert_intermediate_size": model.shared_expert_ffn_hidden_size,
            "num_experts": model.num_experts,
            "num_experts_per_tok": model.top_k,
            "decoder_sparse_step": model.moe_every,
            "mlp_only_layers": [],
            "norm_topk_prob": bool(values["renormalize"]),
            # Always biased: transformers 4.x builds q/k/v biases unconditionally (zeros if we had none).
            "qkv_bias": True,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": model.n_layers,
            "router_aux_loss_coef": aux_coef_to_hf(values["aux_loss_coef"], model.top_k, n_moe),
            "output_router_logits": False,
        }
        return config, warnings

    def prepare_export(
        self, model: ModelConfig, state: dict[str, torch.Tensor]
    ) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
        if model.qkv_bias:
            return model, state
        # Zero q/k/v biases compute exactly what no biases do, and every transformers version loads them.
        state = dict(state)
        for i in range(model.n_layers):
            for name in ("q_proj", "k_proj", "v_proj"):
                weight = state.get(f"blocks.{i}.attn.{name}.weight")
                if weight is not None:
                    state[f"blocks.{i}.attn.{name}.bias"] = weight.new_zeros(weight.shape[0])
        return model.model_copy(update={"qkv_bias": True}), state
