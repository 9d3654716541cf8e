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
