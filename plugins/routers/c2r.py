"""`c2r`: collaboration-constrained routing.

Per token: the top-1 expert e by router score, then the k-1 highest-scoring experts among e's
first `top_t` collaborators. Collaborators come from the collaboration profile (`profile`: the
layer's collaborator lists) or from the expert placement (`placement`: the other experts on e's
device, so all k experts of a token live on one device and the token crosses the network once).
Weights are the router probabilities of the chosen experts. Load-aware C2R (`bias_update_rate`):
the auxiliary-loss-free expert bias (DeepSeek-V3) shifts the top-1 and candidate *selection*,
never the weights.

Variants aimed at C2R's quality cost (docs/frontier.md):
- soft C2R (`penalty`): the k-1 experts beside the top-1 are the best of *all* experts after
  non-candidates' selection values are lowered by `penalty` (logit units; scores + bias under
  load-aware C2R) instead of being masked. penalty = 0 is top-k, penalty -> inf is hard C2R.
- online C2R (`collaborators: online`, `refresh_every: K`): the collaborator lists are re-derived
  every K optimizer steps from the co-activation counts of the running model's unconstrained top-k
  choices over those K steps (summed over all ranks), so no profiling run is needed; until the
  first refresh the router is plain top-k. Lists and counts are buffers saved with checkpoints.
- per-layer T (`layer_top_t`): T of each layer, e.g. chosen by `moelight.c2r.per_layer_t` from
  that layer's collaboration concentration for a devices-per-token budget.

LLaMA-MoE's C2R (the official patch of its TopKBalancedNoisyGate) is this rule with
`gate_network: mlp`, `noise: true` (selection on the noisy logits in training),
`renormalize: true` (softmax over the k chosen logits), `route_scale` and the CV^2
importance + load loss (`balance_loss_coef`), whose smooth load is computed against the
constrained candidate set: an expert is "in" against the best candidate not chosen and "out"
against the weakest one chosen (when T = k - 1 every candidate is chosen, and the next
collaborator in the list sets the bar, as the official code does at T = 1).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from pydantic import Field, model_validator

from moelight.api import (
    ConfigError,
    GateNetwork,
    GateNoise,
    LayerContext,
    LoadMembership,
    Router,
    Routing,
    StandardRoutingParams,
    apply_route_scale,
    build_gate,
    cv_balance_loss,
    expert_counts,
    finish_routing,
    is_collaborator_list,
    record_expert_load,
    register_expert_bias,
    router_scores,
    routers,
    smooth_load,
    update_expert_bias,
)


def collaborator_lists_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """[E, E] co-activation counts -> row i: the other experts by decreasing count (ties: lower id
    first), i itself last."""
    c = counts.float().clone()
    c.fill_diagonal_(float("-inf"))
    return c.sort(dim=1, descending=True, stable=True).indices


@routers.register("c2r")
class C2RRouter(Router):
    """Top-1 expert plus the best k-1 of its top_t collaborators."""

    class Params(StandardRoutingParams):
        top_t: int = Field(
            ..., ge=1, description="candidates per token: the top-1 expert's first top_t collaborators"
        )
        collaborators: Literal["profile", "placement", "online"] = Field(
            "profile",
            description="collaborator source: the profile's lists, the experts on the same device, or "
            "lists re-derived online from the running model's co-activation (see refresh_every)",
        )
        penalty: float | None = Field(
            None,
            ge=0,
            description="soft C2R: offset subtracted from non-candidates' selection values instead of "
            "masking them (0 = top-k, .inf = hard C2R); null = hard C2R",
        )
        refresh_every: int = Field(
            0, ge=0, description="online C2R: optimizer steps between re-derivations of the lists"
        )
        layer_top_t: list[int] | None = Field(
            None,
            description="per-layer T: entry i is top_t of transformer layer i (overrides top_t there)",
        )
        # LLaMA-MoE's gate (see the module docstring)
        gate_network: GateNetwork = Field(
            "linear", description="linear gate, or LLaMA-MoE's mlp gate (Linear -> Tanh -> Linear)"
        )
        noise: bool = Field(
            False, description="learned gate noise in training; experts are chosen on noisy logits"
        )
        noise_epsilon: float = Field(1e-2, gt=0, description="minimum noise std (with noise: true)")
        balance_loss_coef: float = Field(
            0.0, ge=0, description="weight of CV^2(importance) + CV^2(load) against the candidate set"
        )
        load_membership: LoadMembership = Field(
            "noisy_logit",
            description="smooth load decides membership on the noisy logit (paper) or the noise alone "
            "(noise: LLaMA-MoE's code)",
        )
        bias_update_rate: float = Field(
            0.0, ge=0, description="load-aware C2R: step of the selection-only expert bias (0 = off)"
        )

        @model_validator(mode="after")
        def _one_balancing_method(self):
            if self.bias_update_rate and self.balance_loss_coef:
                raise ValueError(
                    "bias_update_rate (load-aware C2R) and balance_loss_coef (LLaMA-MoE's CV^2 loss) "
                    "are two balancing methods; set only one"
                )
            online = self.collaborators == "online"
            if online != bool(self.refresh_every):
                raise ValueError(
                    "collaborators: online needs refresh_every >= 1 (steps between list refreshes), "
                    "and refresh_every applies only to collaborators: online"
                )
            if self.balance_loss_coef and (online or self.penalty is not None):
                raise ValueError(
                    "balance_loss_coef (LLaMA-MoE's smooth load against a fixed candidate set) works "
                    "with hard C2R on profile or placement lists only; unset penalty / use profile lists"
                )
            return self

    def __init__(self, params: Params, ctx: LayerContext):
        super().__init__(params, ctx)
        e, k, t = ctx.num_experts, ctx.top_k, params.top_t
        if params.layer_top_t is not None:
            if ctx.layer_index >= len(params.layer_top_t):
                raise ConfigError(
                    "router.layer_top_t",
                    f"{len(params.layer_top_t)} entries, but MoE layer {ctx.layer_index} needs one "
                    "(one entry per transformer layer)",
                )
            t = params.layer_top_t[ctx.layer_index]
        self.top_t = t
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
            if params.collaborators == "online":
                # Until the first refresh: plain top-k; the table is rebuilt from online_lists.
                lists = torch.stack(
                    [torch.cat([torch.arange(e)[torch.arange(e) != i], torch.tensor([i])]) for i in range(e)]
                )
                table, valid = self._profile_candidates(lists, t)
                following = None
                # Saved with checkpoints so that a resumed run routes and refreshes exactly as before.
                self.register_buffer("online_lists", lists)
                self.register_buffer("online_counts", torch.zeros(e, e))
                # long, not bool: DDP broadcasts buffers, and 0/1 travels on every backend
                self.register_buffer("online_ready", torch.zeros((), dtype=torch.long))
                self.register_buffer("online_steps", torch.zeros((), dtype=torch.long))
                self.register_buffer("online_pending", torch.zeros(e, e), persistent=False)
            elif params.collaborators == "profile":
                table, valid = self._profile_candidates(collab, t)
                following = self._next_collaborator(collab, t)
            else:
                table, valid = self._placement_candidates(ctx, collab, t)
                following = None
        # Derived from the recipe's profile/placement, so not part of the checkpoint.
        self.register_buffer("candidates", table, persistent=False)
        self.register_buffer("candidate_valid", valid, persistent=False)
        # The (T+1)-th collaborator: the smooth load's bar when all T candidates are chosen.
        self.register_buffer("next_collaborator", following, persistent=False)
        self._padded = not bool(valid.all())
        self.gate = build_gate(ctx.hidden_size, e, params.gate_network)
        self.noise = GateNoise(ctx.hidden_size, e, params.noise_epsilon) if params.noise else None
        if params.bias_update_rate:
            register_expert_bias(self, e)

    @staticmethod
    def _collaborator_lists(params: Params, ctx: LayerContext) -> torch.Tensor | None:
        e = ctx.num_experts
        if params.collaborators == "online":
            return None  # derived while training
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
    def _next_collaborator(collab: torch.Tensor, t: int) -> torch.Tensor | None:
        """Row e: e's (t+1)-th collaborator, or None when the lists have no expert left after t."""
        if t >= collab.shape[0] - 1:
            return None
        return torch.stack([row[row != i][t] for i, row in enumerate(collab)])

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
        clean = self.gate(x).float()
        noisy_training = self.training and self.noise is not None
        logits, noise, noise_std = self.noise(x, clean) if noisy_training else (clean, None, None)
        scores = router_scores(logits, p.score)
        # Selection values: the logits (the score functions are monotonic), or, for load-aware
        # C2R, the scores plus the expert bias (then there is no smooth load, see the validator).
        selection = scores.detach() + self.expert_bias if p.bias_update_rate else logits
        top1 = selection.argmax(dim=-1, keepdim=True)  # [T, 1]
        online = p.collaborators == "online"
        if online and self.training:
            self._record_coactivation(selection.detach().topk(k, dim=-1).indices)
        if online and not bool(self.online_ready):
            experts = selection.topk(k, dim=-1).indices  # no lists yet: top-k
        elif p.penalty is not None:
            experts = self._soft_select(selection, top1, k)
        else:
            cand = self.candidates[top1.squeeze(1)]  # [T, t]
            cand_values = selection.gather(1, cand)
            if self._padded:
                cand_values = cand_values.masked_fill(~self.candidate_valid[top1.squeeze(1)], float("-inf"))
            # The best k candidates, best first: k-1 are chosen, the k-th is the smooth load's bar.
            ranked_values, ranked = cand_values.topk(min(k, cand.shape[1]), dim=-1)
            experts = torch.cat([top1, cand.gather(1, ranked[:, : k - 1])], dim=1)
        if self.training and p.bias_update_rate:
            record_expert_load(self, experts)
        routing = finish_routing(clean, scores, experts, p, scale=False)  # the loss needs them unscaled
        if p.balance_loss_coef:
            if noisy_training and k < self.ctx.num_experts:
                # The official gate's `top_logits`: top-1, then the best candidates; [T, k or k+1].
                top_values = torch.cat([logits.gather(1, top1), ranked_values], dim=1)
                load = smooth_load(
                    clean,
                    logits,
                    noise,
                    noise_std,
                    threshold_in=self._bar(top_values, logits, top1, k),
                    threshold_out=top_values[:, k - 1 : k],
                    membership=p.load_membership,
                )
            else:
                load = expert_counts(experts, self.ctx.num_experts)
            routing.aux_losses["load_balance"] = p.balance_loss_coef * cv_balance_loss(
                experts, routing.weights, load
            )
        return apply_route_scale(routing, p)

    def _soft_select(self, selection: torch.Tensor, top1: torch.Tensor, k: int) -> torch.Tensor:
        """Soft C2R: top-1, then the best k-1 others after non-candidates lose `penalty`."""
        rows = top1.squeeze(1)
        # scatter_add, not scatter: padded (invalid) slots point at expert 0, which may be valid too
        allowed = torch.zeros_like(selection, dtype=torch.long)
        allowed = allowed.scatter_add(1, self.candidates[rows], self.candidate_valid[rows].long()) > 0
        others = torch.where(allowed, selection, selection - self.params.penalty)
        others = others.scatter(1, top1, float("-inf"))
        return torch.cat([top1, others.topk(k - 1, dim=-1).indices], dim=1)

    @torch.no_grad()
    def _record_coactivation(self, chosen: torch.Tensor) -> None:
        """Add the co-activation counts of this forward's unconstrained top-k choices [T, k]."""
        onehot = torch.zeros(chosen.shape[0], self.ctx.num_experts, device=chosen.device)
        onehot.scatter_(1, chosen, 1.0)
        counts = onehot.T @ onehot
        counts.fill_diagonal_(0)
        self.online_pending.add_(counts.to(self.online_pending.device))

    @torch.no_grad()
    def _refresh_online(self) -> None:
        """Fold this step's counts in (summed over ranks); every refresh_every steps, new lists."""
        pending = self.online_pending
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(pending)  # every replica keeps the same counts and lists
        self.online_counts.add_(pending)
        pending.zero_()
        self.online_steps.add_(1)
        if int(self.online_steps) % self.params.refresh_every:
            return
        lists = collaborator_lists_from_counts(self.online_counts)
        self.online_lists.copy_(lists)
        table, _ = self._profile_candidates(lists.cpu(), self.top_t)
        self.candidates.copy_(table.to(self.candidates.device))
        self.online_counts.zero_()
        self.online_ready.fill_(1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.params.collaborators == "online":  # the derived table follows the loaded lists
            table, _ = self._profile_candidates(self.online_lists.cpu(), self.top_t)
            self.candidates.copy_(table.to(self.candidates.device))

    def after_optimizer_step(self) -> None:
        if self.params.bias_update_rate:
            update_expert_bias(self, self.params.bias_update_rate)
        if self.params.collaborators == "online":
            self._refresh_online()

    def discard_step(self) -> None:
        if self.params.collaborators == "online":
            self.online_pending.zero_()

    def _bar(
        self, top_values: torch.Tensor, logits: torch.Tensor, top1: torch.Tensor, k: int
    ) -> torch.Tensor:
        """[T, 1]: the best value not chosen: the k-th best candidate, or, when the candidates are
        all chosen (T = k - 1), the next collaborator's logit (-inf in placement mode)."""
        if top_values.shape[1] > k:
            return top_values[:, k : k + 1]
        if self.next_collaborator is None:
            return torch.full_like(top_values[:, :1], float("-inf"))
        return logits.gather(1, self.next_collaborator[top1])
