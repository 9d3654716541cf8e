"""`balanced`: routers that actively balance expert load.

- `method: noisy_cv` — the noisy top-k gate of Shazeer et al. (2017) as LLaMA-MoE's
  TopKBalancedNoisyGate uses it: learned input-dependent Gaussian noise on the logits during
  training, combine weights = softmax over the k selected (noisy) logits, and the loss
  `CV^2(importance) + CV^2(load)`, where importance = the summed gate weights per expert and
  load = the smooth probability (normal CDF) that each expert lands in the top k under the noise
  (the plain count when no noise is drawn).
- `method: bias` — auxiliary-loss-free balancing (DeepSeek-V3): a per-expert bias, added to the
  scores for selection only, nudged after every training forward by
  `bias_update_rate * sign(mean_load - load_e)`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from moelight.api import LayerContext, PluginParams, Router, Routing, routers
from moelight.expert_bias import register_expert_bias, update_expert_bias
from moelight.router_losses import (
    cv_squared,
    expert_counts,
    router_scores,
    standard_routing,
    z_loss,
)

# Params that belong to one method only; setting one under the other method is a recipe error.
_METHOD_PARAMS = {
    "noisy_cv": ("noise_epsilon", "balance_loss_coef"),
    "bias": ("score", "renormalize", "bias_update_rate", "aux_loss_coef"),
}


@routers.register("balanced")
class BalancedRouter(Router):
    """Top-k router with active load balancing (`noisy_cv` or `bias`)."""

    class Params(PluginParams):
        method: Literal["noisy_cv", "bias"] = Field("noisy_cv", description="balancing method")
        z_loss_coef: float = Field(0.0, ge=0, description="router z-loss weight (both methods)")
        # noisy_cv
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
        self.gate = nn.Linear(d, e, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)
        if params.method == "noisy_cv":
            # Zero init as in LLaMA-MoE: the noise starts at std softplus(0) + eps everywhere.
            self.noise = nn.Linear(d, e, bias=False)
            nn.init.zeros_(self.noise.weight)
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
        noisy_training = self.training
        if noisy_training:
            noise_std = nn.functional.softplus(self.noise(x).float()) + p.noise_epsilon
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean
        # k+1 values: the (k+1)-th is the threshold an expert outside the top k has to beat.
        m = min(k + 1, e)
        top_logits, top_idx = logits.topk(m, dim=-1)
        experts = top_idx[:, :k]
        weights = torch.softmax(top_logits[:, :k], dim=-1)

        losses: dict[str, torch.Tensor] = {}
        if p.balance_loss_coef:
            importance = torch.zeros_like(clean).scatter(1, experts, weights).sum(0)
            if noisy_training and k < e:
                load = self._smooth_load(clean, logits, noise_std, top_logits, k)
            else:
                load = expert_counts(experts, e)
            losses["load_balance"] = p.balance_loss_coef * (cv_squared(importance) + cv_squared(load))
        if p.z_loss_coef:
            losses["z_loss"] = p.z_loss_coef * z_loss(clean)
        return Routing(experts=experts, weights=weights, logits=clean, aux_losses=losses)

    @staticmethod
    def _smooth_load(
        clean: torch.Tensor, noisy: torch.Tensor, noise_std: torch.Tensor, top_logits: torch.Tensor, k: int
    ) -> torch.Tensor:
        """Expected number of tokens per expert: sum over tokens of P(expert in top k).

        For expert e the other noisy logits are held fixed: if e is in the top k it must stay
        above the (k+1)-th value, otherwise it must beat the k-th value (Shazeer et al. 2017).
        Membership is decided on the noisy logits, as in the paper (the LLaMA-MoE gate we read
        compares the noise term alone against the threshold).
        """
        threshold_if_in = top_logits[:, k : k + 1]
        threshold_if_out = top_logits[:, k - 1 : k]
        is_in = noisy > threshold_if_in
        threshold = torch.where(is_in, threshold_if_in, threshold_if_out)
        # Standard normal CDF without torch.distributions (no device bookkeeping).
        z = (clean - threshold) / noise_std
        prob = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
        return prob.sum(0)

    # --- bias ---------------------------------------------------------------------------------

    def _bias(self, x: torch.Tensor) -> Routing:
        p, k = self.params, self.ctx.top_k
        logits = self.gate(x).float()
        scores = router_scores(logits, p.score)
        # The bias steers selection only; the weights come from the unbiased scores.
        experts = (scores.detach() + self.expert_bias).topk(k, dim=-1).indices
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
