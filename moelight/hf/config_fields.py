"""config.json <-> ModelConfig fields every Llama-style decoder spells the same way, and the aux-loss scale."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from moelight.errors import MoelightError, validation_message
from moelight.recipe import ModelConfig


def require(cfg: dict[str, Any], key: str, source: str) -> Any:
    if cfg.get(key) is None:
        raise MoelightError(f"{source}: config.json has no {key!r}")
    return cfg[key]


def rope_theta(cfg: dict[str, Any], source: str, default: float) -> float:
    """rope_theta from transformers 5 (`rope_parameters`) or 4 (`rope_theta`/`rope_scaling`)."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise MoelightError(
            f"{source}: rope type {rope_type!r} is not supported (moelight implements plain RoPE only)"
        )
    return float(params.get("rope_theta") or cfg.get("rope_theta") or default)


def check_silu(cfg: dict[str, Any], source: str) -> None:
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise MoelightError(f"{source}: hidden_act {act!r} is not supported (moelight's experts are SwiGLU)")


def head_dim_field(cfg: dict[str, Any]) -> int | None:
    """config.json head_dim, or None where it is the default hidden_size / num_attention_heads."""
    head_dim = cfg.get("head_dim")
    if head_dim is None or head_dim * cfg["num_attention_heads"] == cfg["hidden_size"]:
        return None
    return int(head_dim)


def common_model_fields(cfg: dict[str, Any], source: str, rope_default: float) -> dict[str, Any]:
    """The ModelConfig fields every Llama-style decoder spells the same way."""
    check_silu(cfg, source)
    heads = require(cfg, "num_attention_heads", source)
    return {
        "vocab_size": require(cfg, "vocab_size", source),
        "n_layers": require(cfg, "num_hidden_layers", source),
        "hidden_size": require(cfg, "hidden_size", source),
        "n_heads": heads,
        "n_kv_heads": cfg.get("num_key_value_heads") or heads,
        "head_dim": head_dim_field(cfg),
        "rope_theta": rope_theta(cfg, source, rope_default),
        "norm_eps": cfg.get("rms_norm_eps", 1e-6),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        # The context length, as lm-eval's HF model reads it: `moelight eval`'s default window.
        "max_position_embeddings": cfg.get("max_position_embeddings"),
    }


def every_layer_moe_fields(
    cfg: dict[str, Any],
    source: str,
    *,
    rope_default: float,
    experts_key: str,
    qk_norm: bool,
    top_k_key: str = "num_experts_per_tok",
    expert_size: int | None = None,
) -> dict[str, Any]:
    """ModelConfig fields of a decoder that is MoE in every layer, without a shared expert or
    attention biases (Mixtral, OLMoE, LLaMA-MoE); `experts_key` and `top_k_key` are the config.json
    names of the expert count and of k; `expert_size` defaults to `intermediate_size`."""
    fields = common_model_fields(cfg, source, rope_default)
    k = require(cfg, top_k_key, source)
    ffn = require(cfg, "intermediate_size", source)
    fields.update(
        ffn_hidden_size=ffn,  # unused: every layer is MoE
        num_experts=require(cfg, experts_key, source),
        top_k=k,
        expert_ffn_hidden_size=ffn if expert_size is None else expert_size,
        moe_every=1,
        shared_expert_ffn_hidden_size=0,
        shared_expert_gate=False,
        qkv_bias=False,
        qk_norm=qk_norm,
    )
    return fields


def common_hf_fields(model: ModelConfig) -> dict[str, Any]:
    head_dim = model.head_dim or model.hidden_size // model.n_heads
    return {
        "vocab_size": model.vocab_size,
        "hidden_size": model.hidden_size,
        "num_hidden_layers": model.n_layers,
        "num_attention_heads": model.n_heads,
        "num_key_value_heads": model.n_kv_heads or model.n_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": model.norm_eps,
        "tie_word_embeddings": model.tie_embeddings,
        # Both spellings: transformers 5 reads rope_parameters, 4.x reads rope_theta.
        "rope_theta": model.rope_theta,
        "rope_parameters": {"rope_theta": model.rope_theta, "rope_type": "default"},
        "max_position_embeddings": model.max_position_embeddings or 4096,
        "initializer_range": model.init_std,
        "attention_dropout": 0.0,
        "use_cache": True,
    }


# A blocker: what the model has that an HF class cannot hold, and the recipe change that removes it
# ("model.qkv_bias: true (Mixtral has no attention biases; fix: model.qkv_bias=false)").
def blocker(what: str, why: str, fix: str) -> str:
    return f"{what} ({why}; fix: {fix})"


def plain_attention_problems(model: ModelConfig, title: str) -> dict[str, bool]:
    """What an HF class whose attention has neither q/k/v biases nor QK-norm cannot hold."""
    return {
        blocker(
            "model.qkv_bias: true", f"{title} has no attention biases", "model.qkv_bias=false"
        ): model.qkv_bias,
        blocker("model.qk_norm: true", f"{title} has no QK-norm", "model.qk_norm=false"): model.qk_norm,
    }


def every_layer_moe_problems(model: ModelConfig, title: str) -> dict[str, bool]:
    """What an HF class with an MoE FFN in every layer and no shared expert cannot hold
    (`title`: the architecture as people write it), for `refuse_unexportable`."""
    return {
        blocker(
            f"a shared expert (model.shared_expert_ffn_hidden_size: {model.shared_expert_ffn_hidden_size})",
            f"{title} has none",
            "model.shared_expert_ffn_hidden_size=0",
        ): bool(model.shared_expert_ffn_hidden_size),
        blocker(
            f"dense layers (model.moe_every: {model.moe_every})",
            f"{title} is MoE in every layer",
            "model.moe_every=1",
        ): model.moe_every != 1,
    }


def head_dim_problem(model: ModelConfig) -> dict[str, bool]:
    """A head_dim other than hidden_size / n_heads, which an HF class without `head_dim` cannot hold."""
    return {
        blocker(
            f"model.head_dim: {model.head_dim}",
            "it must be hidden_size / n_heads here",
            "model.head_dim=null",
        ): bool(model.head_dim and model.head_dim * model.n_heads != model.hidden_size)
    }


def present(problems: dict[str, bool]) -> list[str]:
    return [what for what, there in problems.items() if there]


def refuse_unexportable(arch: str, blockers: list[str] | dict[str, bool]) -> None:
    """One error naming every blocker the model has for `--arch arch`."""
    found = present(blockers) if isinstance(blockers, dict) else blockers
    if found:
        numbered = "; ".join(f"({i}) {b}" for i, b in enumerate(found, 1))
        raise MoelightError(f"--arch {arch}: the model cannot be exported as {arch}: {numbered}")


def aux_coef_to_moelight(hf_coef: float, top_k: int, n_moe_layers: int) -> float:
    """HF's load-balancing loss counts k assignments per token and averages over layers; moelight's
    counts shares of the T*k assignments and sums over layers: equal totals need this factor."""
    return float(hf_coef) * top_k / max(n_moe_layers, 1)


def aux_coef_to_hf(coef: float, top_k: int, n_moe_layers: int) -> float:
    return float(coef) * max(n_moe_layers, 1) / top_k


def validate_model(fields: dict[str, Any], source: str) -> ModelConfig:
    try:
        return ModelConfig.model_validate(fields)
    except ValidationError as err:
        raise MoelightError(
            f"{source}: the converted model section is invalid:\n{validation_message(err, 'model')}"
        ) from None
