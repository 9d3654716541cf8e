"""`c2r`: collaboration-constrained routing.

Per token: the top-1 expert e by router score, then the k-1 highest-scoring experts among e's
first `top_t` collaborators. Collaborators come from the collaboration profile (`profile`: the
layer's collaborator lists) or from the expert placement (`placement`: the other experts on e's
device, so all k experts of a token live on one device and the token crosses the network once).
Weights are the router probabilities of the chosen experts. Load-aware C2R (`bias_update_rate`):
the auxiliary-loss-free expert bias (DeepSeek-V3) shifts the top-1 and candidate *selection*,
never the weights.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from moelight.api import ConfigError, LayerContext, PluginParams, Router, Routing, routers
from moelight.collaboration import is_collaborator_list
from moelight.expert_bias import register_expert_bias, update_expert_bias
from moelight.router_losses import router_scores, standard_routing


@routers.register("c2r")
class C2RRouter(Router):
    """Top-1 expert plus the best k-1 of its top_t collaborators."""

    class Params(PluginParams):
        top_t: int = Field(
            ..., ge=1, description="candidates per token: the top-1 expert's first top_t collaborators"
        )
        collaborators: Literal["profile", "placement"] = Field(
            "profile",
            description="collaborator source: the profile's lists, or the experts on the same device",
        )
        score: Literal["softmax", "sigmoid"] = Field(
            "softmax", description="score function over the router logits"
        )
        renormalize: bool = Field(False, description="renormalise the k combine weights to sum 1")
        aux_loss_coef: float = Field(0.01, ge=0, description="Switch/GShard load-balancing loss weight")
        z_loss_coef: float = Field(0.0, ge=0, description="router z-loss weight (ST-MoE)")
        bias_update_rate: float = Field(
            0.0, ge=0, description="load-aware C2R: step of the selection-only expert bias (0 = off)"
        )

    def __init__(self, params: Params, ctx: LayerContext):
        super().__init__(params, ctx)
        e, k, t = ctx.num_experts, ctx.top_k, params.top_t
        if t < k - 1:
            raise ConfigError(
                "router.top_t",
                f"top_t = {t} must be >= top_k - 1 (= {k - 1}): the k-1 experts beside the top-1 "
                "are picked among its first top_t collaborators",
            )
        if t > e - 1:
            raise ConfigError("router.top_t", f"top_t = {t} must be <= num_experts - 1 (= {e - 1})")
        # The tables are data, built on the CPU even when the model is built on the meta device.
        with torch.device("cpu"):
            collab = self._collaborator_lists(params, ctx)
            if params.collaborators == "profile":
                table, valid = self._profile_candidates(collab, t)
            else:
                table, valid = self._placement_candidates(ctx, collab, t)
        # Derived from the recipe's profile/placement, so not part of the checkpoint.
        self.register_buffer("candidates", table, persistent=False)
        self.register_buffer("candidate_valid", valid, persistent=False)
        self._padded = not bool(valid.all())
        self.gate = nn.Linear(ctx.hidden_size, e, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)
        if params.bias_update_rate:
            register_expert_bias(self, e)

    @staticmethod
    def _collaborator_lists(params: Params, ctx: LayerContext) -> torch.Tensor | None:
        e = ctx.num_experts
        if ctx.collaborators is None:
            if params.collaborators == "profile":
                raise ConfigError(
                    "profile.path",
                    "the c2r router with collaborators: profile needs a collaboration profile; set profile.path "
                    "to a `moelight profile` artifact or a .npy/.json of collaborator lists or co-activation "
                    "counts (or use router.collaborators: placement)",
                )
            return None
        collab = ctx.collaborators.detach().cpu().long()
        if collab.shape != (e, e):
            raise ConfigError(
                "profile.path",
                f"layer {ctx.layer_index}: collaborator lists must be [{e}, {e}], got {list(collab.shape)}",
            )
        if not is_collaborator_list(collab):
            raise ConfigError(
                "profile.path",
                f"layer {ctx.layer_index}: every collaborator list must be a permutation of 0..{e - 1}",
            )
        return collab

    @staticmethod
    def _profile_candidates(collab: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row e: e's first t collaborators, skipping e itself wherever the list puts it."""
        rows = [row[row != i][:t] for i, row in enumerate(collab)]
        table = torch.stack(rows)
        return table, torch.ones_like(table, dtype=torch.bool)

    @staticmethod
    def _placement_candidates(
        ctx: LayerContext, collab: torch.Tensor | None, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Row e: the other experts on e's device (collaborator order if known, else id order).

        Rows are capped at t entries and padded (marked invalid) when device groups differ in size.
        """
        e, k = ctx.num_experts, ctx.top_k
        placement = ctx.placement.detach().cpu().long()
        rows = []
        for i in range(e):
            group = (placement == placement[i]).nonzero().flatten()
            group = group[group != i]
            if collab is not None:
                rank = torch.empty(e, dtype=torch.long)
                rank[collab[i]] = torch.arange(e)
                group = group[rank[group].argsort(stable=True)]
            rows.append(group[:t])
        smallest = min(len(r) for r in rows)
        if smallest < k - 1:
            raise ConfigError(
                "router.top_t",
                f"with collaborators: placement the candidates are the other experts on the top-1 expert's "
                f"device; the smallest placement group has {smallest + 1} experts, so top_t is capped at "
                f"{smallest}, below top_k - 1 (= {k - 1})",
            )
        width = max(len(r) for r in rows)
        table = torch.zeros(e, width, dtype=torch.long)
        valid = torch.zeros(e, width, dtype=torch.bool)
        for i, r in enumerate(rows):
            table[i, : len(r)] = r
            valid[i, : len(r)] = True
        return table, valid

    def forward(self, x: torch.Tensor) -> Routing:
        p, k = self.params, self.ctx.top_k
        logits = self.gate(x).float()
        scores = router_scores(logits, p.score)
        selection = scores.detach() + self.expert_bias if p.bias_update_rate else scores.detach()
        top1 = selection.argmax(dim=-1, keepdim=True)  # [T, 1]
        if k > 1:
            cand = self.candidates[top1.squeeze(1)]  # [T, t]
            cand_scores = selection.gather(1, cand)
            if self._padded:
                cand_scores = cand_scores.masked_fill(~self.candidate_valid[top1.squeeze(1)], float("-inf"))
            picked = cand.gather(1, cand_scores.topk(k - 1, dim=-1).indices)
            experts = torch.cat([top1, picked], dim=1)
        else:
            experts = top1
        if self.training and p.bias_update_rate:
            update_expert_bias(self.expert_bias, experts, p.bias_update_rate)
        return standard_routing(
            logits,
            scores,
            experts,
            score=p.score,
            renormalize=p.renormalize,
            aux_loss_coef=p.aux_loss_coef,
            z_loss_coef=p.z_loss_coef,
        )
