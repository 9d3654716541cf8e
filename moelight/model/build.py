"""Build the model a recipe describes: layer contexts, routers, experts and dispatchers."""

from __future__ import annotations

from torch import nn

from moelight.c2r.collaboration import load_collaboration
from moelight.c2r.placement import resolve_placement
from moelight.model.moe_layer import MoELayer
from moelight.model.transformer import MoETransformer, SwiGLU
from moelight.moe.dispatch import ExpertParallelContext
from moelight.moe.experts import ExpertWeights, named_expert_parameters
from moelight.moe.layer_context import LayerContext
from moelight.recipe import Recipe
from moelight.registry import dispatchers, routers


def layer_contexts(recipe: Recipe) -> list[LayerContext]:
    """One LayerContext per MoE layer, with its placement and collaboration profile."""
    cfg = recipe.model
    indices = recipe.model.moe_layers
    placement = resolve_placement(
        recipe.parallel.placement, len(indices), cfg.num_experts, recipe.parallel.expert_parallel
    )
    lists, counts = (None, None)
    if recipe.profile.path:
        lists, counts = load_collaboration(recipe.profile.path, len(indices), cfg.num_experts)
    return [
        LayerContext(
            hidden_size=cfg.hidden_size,
            num_experts=cfg.num_experts,
            top_k=cfg.top_k,
            layer_index=layer,
            expert_hidden_size=cfg.expert_ffn_hidden_size,
            placement=placement[j],
            collaborators=None if lists is None else lists[j],
            coactivation=None if counts is None else counts[j],
        )
        for j, layer in enumerate(indices)
    ]


def build_model(
    recipe: Recipe, ep: ExpertParallelContext | None = None, contexts: list[LayerContext] | None = None
) -> MoETransformer:
    """The full model; with expert parallelism each rank builds only the experts placed on it.

    `contexts` may be computed beforehand (e.g. outside a `torch.device("meta")` block).
    """
    ep = ep or ExpertParallelContext()
    cfg = recipe.model
    moe_layers = {}
    for ctx in contexts if contexts is not None else layer_contexts(recipe):
        local_ids = [e for e, device in enumerate(ctx.placement.tolist()) if device == ep.rank]
        experts = ExpertWeights(local_ids, cfg.hidden_size, cfg.expert_ffn_hidden_size, cfg.init_std)
        shared = gate = None
        if cfg.shared_expert_ffn_hidden_size:
            shared = SwiGLU(cfg.hidden_size, cfg.shared_expert_ffn_hidden_size)
            gate = nn.Linear(cfg.hidden_size, 1, bias=False) if cfg.shared_expert_gate else None
        router = routers.build(recipe.router, ctx, field="router")
        if getattr(router.params, "freeze_gate", False):
            # router.freeze_gate: the gate keeps its loaded weights; the optimizer skips frozen parameters.
            router.requires_grad_(False)
        moe_layers[ctx.layer_index] = MoELayer(
            ctx,
            router,
            experts,
            dispatchers.build(recipe.dispatcher, ctx, experts, ep, field="dispatcher"),
            shared,
            gate,
        )
    for layer in moe_layers.values():
        layer.check_routing_values = recipe.trainer.check_routing_values
    model = MoETransformer(cfg, moe_layers)
    model.set_activation_checkpointing(recipe.trainer.activation_checkpointing)
    return model


def count_parameters(model: MoETransformer, recipe: Recipe) -> dict[str, int]:
    """Total parameters and those active per token (k of E experts), for the start-up report."""
    cfg = recipe.model
    expert_params = sum(p.numel() for _, p, _ in named_expert_parameters(model))
    per_expert = 3 * cfg.hidden_size * cfg.expert_ffn_hidden_size
    n_moe = len(model.moe_layers)
    total_experts = per_expert * cfg.num_experts * n_moe  # global, even when this rank holds a shard
    dense = sum(p.numel() for p in model.parameters()) - expert_params
    active = dense + per_expert * cfg.top_k * n_moe
    return {"total": dense + total_experts, "active": active, "experts": total_experts, "dense": dense}


def flops_per_token(model: MoETransformer, recipe: Recipe) -> int:
    """Training FLOPs per token: 6 x active non-embedding params + causal attention scores (PaLM appendix B)."""
    counts = count_parameters(model, recipe)
    cfg = recipe.model
    head_dim = cfg.head_dim or cfg.hidden_size // cfg.n_heads
    embed = cfg.vocab_size * cfg.hidden_size
    attn = 6 * cfg.n_layers * cfg.n_heads * head_dim * recipe.data.seq_len  # 12·L·H·S / 2 for causality
    return 6 * (counts["active"] - embed) + attn
