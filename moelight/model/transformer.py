"""A decoder-only transformer with MoE FFNs: RMSNorm, rotary attention (SDPA), SwiGLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moelight.model.kv_cache import KVCache, LayerKV
from moelight.model.loss import chunked_cross_entropy
from moelight.model.moe_layer import MoELayer
from moelight.moe.recompute import CheckpointMode, checkpointed
from moelight.recipe import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 for bf16 stability, as Llama/Qwen do.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rotary_tables(
    seq_len: int, head_dim: int, theta: float, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # the "rotate half" layout used by HF Llama/Qwen
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.head_dim or cfg.hidden_size // cfg.n_heads
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)
        # OLMoE's QK-norm: one RMSNorm over all heads of q (and of k), applied before the head split.
        self.q_norm = RMSNorm(self.n_heads * self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.n_kv_heads * self.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: LayerKV | None = None
    ) -> torch.Tensor:
        """`cache` (inference): keys/values of the earlier positions, extended here by this call's;
        `cos`/`sin` are then the tables of this call's positions only."""
        b, s, _ = x.shape
        q, k = self.q_proj(x), self.k_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # SDPA's is_causal aligns the mask top-left; new query i sits at position past + i.
            mask = torch.ones(s, past + s, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, s, -1))


class SwiGLU(nn.Module):
    """A dense SwiGLU FFN (dense layers and the shared expert)."""

    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, ffn: nn.Module):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.ffn = ffn
        self.checkpointing: CheckpointMode = "none"  # the recipe's trainer.activation_checkpointing

    def _attention(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: LayerKV | None = None
    ) -> torch.Tensor:
        return self.attn(self.attn_norm(x), cos, sin, cache)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.ffn_norm(x))

    def _forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self._attention(x, cos, sin)
        return x + self._ffn(x)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: LayerKV | None = None
    ) -> torch.Tensor:
        training = self.training and torch.is_grad_enabled() and cache is None
        mode = self.checkpointing if training else "none"
        if mode == "full":
            return checkpointed(self._forward, x, cos, sin)
        if mode == "attention":
            x = x + checkpointed(self._attention, x, cos, sin)
        else:
            x = x + self._attention(x, cos, sin, cache)
        if mode == "moe" and isinstance(self.ffn, MoELayer):
            return x + checkpointed(self._ffn, x)
        return x + self._ffn(x)


class MoETransformer(nn.Module):
    """Token ids [B, S] -> logits [B, S, vocab]. MoE layers are built by the caller (see build.py)."""

    def __init__(self, cfg: ModelConfig, moe_layers: dict[int, MoELayer]):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(
            Block(cfg, moe_layers[i] if i in moe_layers else SwiGLU(cfg.hidden_size, cfg.ffn_hidden_size))
            for i in range(cfg.n_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._init_dense(cfg.init_std)

    def _init_dense(self, std: float) -> None:
        for name, p in self.named_parameters():
            if ".experts." in name or name.endswith("norm.weight"):
                continue
            if p.dim() >= 2:
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    @property
    def moe_layers(self) -> list[MoELayer]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoELayer)]

    def set_activation_checkpointing(self, mode: CheckpointMode) -> None:
        for block in self.blocks:
            block.checkpointing = mode

    @property
    def head_weight(self) -> torch.Tensor:
        """The output projection [vocab, hidden] (the embedding when tied)."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids [B, S] -> the final-norm hidden states [B, S, hidden]."""
        head_dim = self.blocks[0].attn.head_dim
        cos, sin = rotary_tables(idx.shape[1], head_dim, self.cfg.rope_theta, idx.device)
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_chunk_tokens: int = 0
    ) -> torch.Tensor:
        """Logits [B, S, vocab]; with `targets` [B, S] the mean next-token cross-entropy instead
        (ignoring -100), over chunks of `loss_chunk_tokens` rows so that the full logits never
        exist (0 = in one piece). The loss is computed here, inside the model's forward, so that a
        sharding wrapper (FSDP) has the output projection's weight gathered while it is used."""
        h = self.hidden_states(idx)
        if targets is None:
            return h @ self.embed.weight.t() if self.lm_head is None else self.lm_head(h)
        return chunked_cross_entropy(h, self.head_weight, targets, loss_chunk_tokens)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.blocks))

    def forward_cached(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Inference: logits [B, S, vocab] of tokens `idx` that follow the `cache.length` tokens the
        cache holds (their keys and values); the cache then holds these tokens too."""
        past, s = cache.length, idx.shape[1]
        head_dim = self.blocks[0].attn.head_dim
        cos, sin = rotary_tables(past + s, head_dim, self.cfg.rope_theta, idx.device)
        cos, sin = cos[past:], sin[past:]
        x = self.embed(idx)
        for block, layer_cache in zip(self.blocks, cache.layers, strict=True):
            x = block(x, cos, sin, layer_cache)
        x = self.norm(x)
        return x @ self.embed.weight.t() if self.lm_head is None else self.lm_head(x)

    def aux_loss(self) -> torch.Tensor:
        """Sum of the already-weighted router losses of the last forward."""
        losses = [v for layer in self.moe_layers for v in layer.aux_losses.values()]
        return torch.stack(losses).sum() if losses else torch.zeros(())
