"""`balanced`: routers that actively balance expert load.

- `method: noisy_cv` — the noisy top-k gate of Shazeer et al. (2017) as LLaMA-MoE's
  TopKBalancedNoisyGate uses it: learned input-dependent Gaussian noise on the logits during
  training, combine weights = softmax over the k selected (noisy) logits, and the loss
  `CV^2(importance) + CV^2(load)`, where importance = the summed gate weights per expert and
  load = the smooth probability (normal CDF) that each expert lands in the top k under the noise
  (the plain count when no noise is drawn). `gate_network: mlp`, `route_scale` and
  `load_membership: noise` make it LLaMA-MoE v1's gate exactly (what `moelight convert import`
  writes for a `llama_moe` checkpoint).
- `method: bias` — auxiliary-loss-free balancing (DeepSeek-V3): a per-expert bias, added to the
  scores for selection only, nudged after every optimizer step by
  `bias_update_rate * sign(mean_load - load_e)` over that step's load.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from moelight.api import (
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
    record_expert_load,
    register_expert_bias,
    router_scores,
    routers,
    smooth_load,
    update_expert_bias,
    z_loss,
)

# Params that belong to one method only; setting one under the other method is a recipe error.
_METHOD_PARAMS = {
    "noisy_cv": ("noise", "noise_epsilon", "balance_loss_coef", "load_membership"),
    "bias": ("score", "renormalize", "bias_update_rate", "aux_loss_coef"),
}


@routers.register("balanced")
class BalancedRouter(Router):
    """Top-k router with active load balancing (`noisy_cv` or `bias`)."""

    class Params(StandardRoutingParams):
        method: Literal["noisy_cv", "bias"] = Field("noisy_cv", description="balancing method")
        z_loss_coef: float = Field(0.0, ge=0, description="router z-loss weight (both methods)")
        gate_network: GateNetwork = Field(
            "linear", description="linear gate, or LLaMA-MoE's mlp gate (Linear -> Tanh -> Linear)"
        )
        # noisy_cv
        noise: bool = Field(True, description="noisy_cv: add the learned gate noise in training")
        load_membership: LoadMembership = Field(
            "noisy_logit",
            description="noisy_cv: smooth load decides top-k membership on the noisy logit (paper) or on "
            "the noise term alone (noise: LLaMA-MoE's code)",
        )
        noise_epsilon: float = Field(1e-2, gt=0, description="noisy_cv: minimum noise std")
        balance_loss_coef: float = Field(
            0.01, ge=0, description="noisy_cv: weight of CV^2(importance)+CV^2(load)"
        )
        # bias
        score: Literal["softmax", "sigmoid"] = Field("sigmoid", description="bias: score function")
        renormalize: bool = Field(True, description="bias: renormalise the k combine weights to sum 1")
        bias_update_rate: float = Field(1e-3, ge=0, description="bias: step of the per-expert bias update")
        aux_loss_coef: float = Field(
            0.0,
            ge=0,
            description="bias: optional small Switch load-balancing loss (DeepSeek-V3's complementary loss)",
        )

        @model_validator(mode="after")
        def _only_own_method_params(self):
            for method, names in _METHOD_PARAMS.items():
                wrong = [n for n in names if n in self.model_fields_set and method != self.method]
                if wrong:
                    raise ValueError(
                        f"{', '.join(wrong)} only apply to method: {method} (method is {self.method})"
                    )
            return self

    def __init__(self, params: Params, ctx: LayerContext):
        super().__init__(params, ctx)
        d, e = ctx.hidden_size, ctx.num_experts
        self.gate = build_gate(d, e, params.gate_network)
        self.noise: GateNoise | None = None
        if params.method == "noisy_cv":
            if params.noise:
                self.noise = GateNoise(d, e, params.noise_epsilon)
        else:
            register_expert_bias(self, e)

    def forward(self, x: torch.Tensor) -> Routing:
        if self.params.method == "noisy_cv":
            return self._noisy_cv(x)
        return self._bias(x)

    # --- noisy_cv ---------------------------------------------------------------------------

    def _noisy_cv(self, x: torch.Tensor) -> Routing:
        p, k, e = self.params, self.ctx.top_k, self.ctx.num_experts
        clean = self.gate(x).float()
        noisy_training = self.training and self.noise is not None
        logits, noise, noise_std = self.noise(x, clean) if noisy_training else (clean, None, None)
        # k+1 values: the (k+1)-th is the threshold an expert outside the top k has to beat.
        top_logits, top_idx = logits.topk(min(k + 1, e), dim=-1)
        experts = top_idx[:, :k]
        weights = torch.softmax(top_logits[:, :k], dim=-1)

        losses: dict[str, torch.Tensor] = {}
        if p.balance_loss_coef:
            if noisy_training and k < e:
                load = smooth_load(
                    clean,
                    logits,
                    noise,
                    noise_std,
                    threshold_in=top_logits[:, k : k + 1],
                    threshold_out=top_logits[:, k - 1 : k],
                    membership=p.load_membership,
                )
            else:
                load = expert_counts(experts, e)
            losses["load_balance"] = p.balance_loss_coef * cv_balance_loss(experts, weights, load)
        if p.z_loss_coef:
            losses["z_loss"] = p.z_loss_coef * z_loss(clean)
        return apply_route_scale(
            Routing(experts=experts, weights=weights, logits=clean, aux_losses=losses), p
        )

    # --- bias ---------------------------------------------------------------------------------

    def _bias(self, x: torch.Tensor) -> Routing:
        p, k = self.params, self.ctx.top_k
        logits = self.gate(x).float()
        scores = router_scores(logits, p.score)
        # The bias steers selection only; the weights come from the unbiased scores.
        experts = (scores.detach() + self.expert_bias).topk(k, dim=-1).indices
        if self.training:
            record_expert_load(self, experts)
        return finish_routing(logits, scores, experts, p)

    def after_optimizer_step(self) -> None:
        if self.params.method == "bias":
            update_expert_bias(self, self.params.bias_update_rate)
