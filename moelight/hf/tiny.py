"""Tiny random Hugging Face MoE checkpoints and a tiny chat tokenizer, built locally (no downloads).

For tests, demos and trying `moelight convert` without a real model; needs `moelight[hf]`.
Weights are drawn at unit-ish scale (not HF's small init, whose ones-norms and zero biases would
hide mapping mistakes), and router weights are spread enough that top-k choices are clear-cut.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

TINY_VOCAB = 320  # >= the tiny tokenizer's 259 ids

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    # Qwen1.5-MoE's shape in miniature: 4 of E routed experts, a gated shared expert, q/k/v biases.
    "qwen2_moe": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=4,
        norm_topk_prob=False,
        qkv_bias=True,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
    ),
    "mixtral": dict(
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=8,
        num_experts_per_tok=2,
        rope_theta=1e6,
        rms_norm_eps=1e-5,
    ),
    "olmoe": dict(
        hidden_size=32,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
    ),
}

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tiny_hf_config(arch: str, **overrides: Any) -> Any:
    """A transformers config object of `arch` at the tiny size, with `overrides` applied."""
    from transformers import MixtralConfig, OlmoeConfig, Qwen2MoeConfig

    classes = {"qwen2_moe": Qwen2MoeConfig, "mixtral": MixtralConfig, "olmoe": OlmoeConfig}
    kwargs = dict(TINY_CONFIGS[arch]) | {
        "vocab_size": TINY_VOCAB,
        "bos_token_id": None,
        "eos_token_id": 256,
        "pad_token_id": 257,
        "tie_word_embeddings": False,
    }
    kwargs |= overrides
    theta = kwargs.pop("rope_theta")
    cfg = classes[arch](**kwargs)
    # transformers 5 keeps rope_theta in rope_parameters; 4.x takes it as an attribute.
    if getattr(cfg, "rope_parameters", None) is not None:
        cfg.rope_parameters["rope_theta"] = theta
    else:
        cfg.rope_theta = theta
    return cfg


def randomize_(model: torch.nn.Module, seed: int = 0, router_std: float = 0.4) -> None:
    """Unit-scale random weights: norms 1 +- 0.2, biases 0.2, matrices 1/sqrt(fan_in), routers `router_std`."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            elif name.endswith("mlp.gate.weight"):
                p.copy_(router_std * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]))


def make_tiny_checkpoint(
    arch: str, out_dir: str | Path, seed: int = 0, max_shard_size: str | None = None, **overrides: Any
) -> Path:
    """Save a tiny random `arch` model with `save_pretrained` (the hub's on-disk layout)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(arch, **overrides))
    randomize_(model, seed)
    out = Path(out_dir)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    return out


def make_tiny_tokenizer(out_dir: str | Path, chat_template: bool = True) -> Path:
    """A byte-level BPE tokenizer with no merges (259 ids: 256 bytes, <|im_end|> = EOS,
    <|endoftext|> = PAD, <|im_start|>) and, optionally, Qwen's ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    out = Path(out_dir)
    fast.save_pretrained(out)
    return out


def make_tiny_llama_moe_checkpoint(
    out_dir: str | Path,
    *,
    gate_network: str = "mlp",
    add_noise: bool = True,
    score_scale: float = 4.0,
    num_experts: int = 8,
    num_selects: int = 2,
    top_t: int | None = None,
    collaborative_list: list | None = None,
    n_layers: int = 2,
    seed: int = 0,
    **config: Any,
) -> Path:
    """A tiny random LLaMA-MoE v1 checkpoint in the official on-disk layout (config.json +
    model.safetensors with pjlab-sys4nlp/llama-moe's key names), written without its modeling code.

    `top_t` and `collaborative_list` add the C2R paper's fields. Noise weights are random (not
    LLaMA-MoE's zeros) so that a mapping mistake shows.
    """
    import json

    from safetensors.torch import save_file

    hidden, heads, size, vocab = 32, 4, 16, TINY_VOCAB
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float | None = None) -> torch.Tensor:
        t = torch.randn(shape, generator=gen)
        return t * (scale if scale is not None else 1 / math.sqrt(shape[-1]))

    head_dim = hidden // heads
    tensors = {"model.embed_tokens.weight": rand(vocab, hidden, scale=1.0)}
    for i in range(n_layers):
        pre = f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"{pre}.self_attn.{name}.weight"] = rand(hidden, hidden)
        # LLaMA-MoE saves the rotary table as a persistent buffer; importers must skip it.
        tensors[f"{pre}.self_attn.rotary_emb.inv_freq"] = 1.0 / (
            10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
        )
        for name in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"{pre}.{name}.weight"] = 1.0 + 0.2 * rand(hidden, scale=1.0)
        gate = f"{pre}.mlp.gate"
        if gate_network == "linear":
            tensors[f"{gate}.gate_network.weight"] = rand(num_experts, hidden, scale=0.5)
        else:
            tensors[f"{gate}.gate_network.0.weight"] = rand(num_experts, hidden, scale=0.5)
            tensors[f"{gate}.gate_network.2.weight"] = rand(num_experts, num_experts, scale=1.0)
        if add_noise:
            tensors[f"{gate}.weight_noise.weight"] = rand(num_experts, hidden, scale=0.3)
        experts = f"{pre}.mlp.calculator.experts"
        for j in range(num_experts):
            tensors[f"{experts}.weight_gate.{j}"] = rand(size, hidden)
            tensors[f"{experts}.weight_up.{j}"] = rand(size, hidden)
            tensors[f"{experts}.weight_down.{j}"] = rand(hidden, size)
    tensors["model.norm.weight"] = 1.0 + 0.2 * rand(hidden, scale=1.0)
    tensors["lm_head.weight"] = rand(vocab, hidden)

    cfg: dict[str, Any] = {
        "architectures": ["LlamaMoEForCausalLM"],
        "model_type": "llama_moe",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": size * num_experts,
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "num_experts": num_experts,
        "num_selects": num_selects,
        "size_experts": [[size] * num_experts for _ in range(n_layers)],
        "gate_type": "TopKBalancedNoisyGate",
        "gate_network": gate_network,
        "gate_use_softmax": True,
        "gate_use_balance": True,
        "gate_balance_loss_weight": 0.01,
        "gate_add_noise": add_noise,
        "gate_noise_epsilon": 0.01,
        "calculator_type": "UniversalCalculator",
        "multiply_gate_scores": True,
        "score_scale_factor": score_scale,
        "add_weight_norm": False,
        "drop_tokens": True,
        "dropped_padding": "zero",
        "capacity_factor": 1.25,
        "pretraining_tp": 1,
        "torch_dtype": "float32",
    } | config
    if top_t is not None:
        cfg["top_t"] = top_t
        cfg["collaborative_list"] = collaborative_list
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out
