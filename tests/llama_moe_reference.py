"""An independent plain-torch re-implementation of LLaMA-MoE v1's forward, for the parity tests.

Written from a reading of the official modeling code (pjlab-sys4nlp/llama-moe,
`smoe/models/llama_moe/modeling_llama_moe_hf.py`) and of the C2R paper's patch of its gate
(UNITES-Lab/c2r-moe, `LLaMA-MoE/modeling_llama_moe_hf.py`); nothing here imports moelight. It reads
the official on-disk format (config.json + safetensors) directly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F


def load(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return json.loads((path / "config.json").read_text()), load_file(str(path / "model.safetensors"))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    var = x.float().pow(2).mean(-1, keepdim=True)
    return weight * (x.float() * torch.rsqrt(var + eps)).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention(cfg: dict, sd: dict, pre: str, x: torch.Tensor) -> torch.Tensor:
    b, s, d = x.shape
    h = cfg["num_attention_heads"]
    hd = d // h
    q = F.linear(x, sd[f"{pre}.q_proj.weight"]).view(b, s, h, hd).transpose(1, 2)
    k = F.linear(x, sd[f"{pre}.k_proj.weight"]).view(b, s, h, hd).transpose(1, 2)
    v = F.linear(x, sd[f"{pre}.v_proj.weight"]).view(b, s, h, hd).transpose(1, 2)
    inv_freq = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.outer(torch.arange(s).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    scores = q @ k.transpose(2, 3) / math.sqrt(hd)
    mask = torch.full((s, s), torch.finfo(scores.dtype).min).triu(1)
    probs = torch.softmax(scores + mask, dim=-1, dtype=torch.float32).to(q.dtype)
    out = (probs @ v).transpose(1, 2).reshape(b, s, d)
    return F.linear(out, sd[f"{pre}.o_proj.weight"])


def gate(
    cfg: dict, sd: dict, pre: str, x: torch.Tensor, training: bool, top_t: int | None, lists: list | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TopKBalancedNoisyGate (or its C2R patch when top_t is given): (indices, scores, balance loss)."""
    k, n = cfg["num_selects"], cfg["num_experts"]
    if cfg["gate_network"] == "linear":
        logits_gate = F.linear(x, sd[f"{pre}.gate_network.weight"])
    else:
        logits_gate = F.linear(
            torch.tanh(F.linear(x, sd[f"{pre}.gate_network.0.weight"])), sd[f"{pre}.gate_network.2.weight"]
        )
    noisy = training and cfg["gate_add_noise"]
    if noisy:
        noise_control = F.softplus(F.linear(x, sd[f"{pre}.weight_noise.weight"])) + cfg["gate_noise_epsilon"]
        logits_noise = torch.randn_like(logits_gate) * noise_control
        logits = logits_gate + logits_noise
    else:
        logits = logits_gate

    if top_t is None:  # the original gate
        top_logits, top_indices = logits.topk(min(k + 1, n), dim=1)
    else:  # the C2R patch: the top-1 expert, then candidates among its collaborators
        first_logit, first = logits.topk(1, dim=1)
        collab = torch.tensor(lists)[first.view(-1)]
        if top_t > 1:
            collab = collab[:, :top_t]
            cand_scores, order = logits.gather(1, collab).topk(k, dim=1)
            top_indices = torch.cat([first, collab.gather(1, order)], dim=1)
            top_logits = torch.cat([first_logit, cand_scores], dim=1)
        else:
            top_indices = torch.cat([first, collab[:, :2]], dim=1)
            top_logits = logits.gather(1, top_indices)
    top_k_indices, top_k_logits = top_indices[:, :k], top_logits[:, :k]
    top_k_scores = torch.softmax(top_k_logits.float(), dim=1)
    importance = torch.zeros_like(logits).scatter(1, top_k_indices, top_k_scores).sum(0)
    if noisy and k != n:
        threshold_in = top_logits[:, k : k + 1]
        threshold_out = top_logits[:, k - 1 : k]
        is_in = logits_noise > threshold_in  # the noise term alone, as the official code compares
        normal = torch.distributions.Normal(0.0, 1.0)
        prob_in = normal.cdf((logits_gate - threshold_in) / noise_control)
        prob_out = normal.cdf((logits_gate - threshold_out) / noise_control)
        load = torch.where(is_in, prob_in, prob_out).sum(0)
    else:
        load = (torch.zeros_like(logits).scatter(1, top_k_indices, top_k_scores) > 0).sum(0)

    def cv2(v: torch.Tensor) -> torch.Tensor:
        return v.float().var() / (v.float().mean() ** 2 + 1e-10)

    loss = cfg["gate_balance_loss_weight"] * (cv2(importance) + cv2(load))
    return top_k_indices, top_k_scores, loss


def moe(cfg: dict, sd: dict, pre: str, x: torch.Tensor, training: bool, top_t, lists):
    flat = x.reshape(-1, x.shape[-1])
    idx, scores, loss = gate(cfg, sd, f"{pre}.gate", flat, training, top_t, lists)
    out = torch.zeros_like(flat)
    scale = cfg["score_scale_factor"]
    for e in range(cfg["num_experts"]):
        rows, slot = (idx == e).nonzero(as_tuple=True)
        if len(rows) == 0:
            continue
        h = flat[rows]
        w = f"{pre}.calculator.experts"
        y = F.linear(
            F.silu(F.linear(h, sd[f"{w}.weight_gate.{e}"])) * F.linear(h, sd[f"{w}.weight_up.{e}"]),
            sd[f"{w}.weight_down.{e}"],
        )
        out.index_add_(0, rows, y * (scores[rows, slot] * scale)[:, None])
    return out.view_as(x), idx, loss


def forward(path: Path, ids: torch.Tensor, training: bool = False):
    """(logits [B, S, V], chosen experts per layer [[B*S, k]], summed balance loss) of the official model."""
    cfg, sd = load(path)
    top_t = cfg.get("top_t")
    eps = cfg["rms_norm_eps"]
    x = sd["model.embed_tokens.weight"][ids]
    chosen, balance = [], torch.zeros(())
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}"
        x = x + attention(cfg, sd, f"{pre}.self_attn", rms_norm(x, sd[f"{pre}.input_layernorm.weight"], eps))
        lists = cfg["collaborative_list"][i] if top_t is not None else None
        y, idx, loss = moe(
            cfg,
            sd,
            f"{pre}.mlp",
            rms_norm(x, sd[f"{pre}.post_attention_layernorm.weight"], eps),
            training,
            top_t,
            lists,
        )
        x = x + y
        chosen.append(idx)
        balance = balance + loss
    x = rms_norm(x, sd["model.norm.weight"], eps)
    return F.linear(x, sd["lm_head.weight"]), chosen, balance
