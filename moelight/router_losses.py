"""Router math shared by the bundled routers: scores, combine weights, auxiliary losses, `Routing`.

Everything is computed in float32 whatever the input dtype, since router probabilities and
their losses are sensitive to bf16 rounding.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from moelight.routing import Routing

Score = Literal["softmax", "sigmoid"]
# How the smooth load decides whether an expert is "in" the top k (see `smooth_load`).
LoadMembership = Literal["noisy_logit", "noise"]


def router_scores(logits: torch.Tensor, score: Score) -> torch.Tensor:
    """Per-expert scores [T, E] in float32: a softmax over experts, or independent sigmoids."""
    logits = logits.float()
    if score == "softmax":
        return torch.softmax(logits, dim=-1)
    if score == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"unknown score function {score!r}")


def combine_weights(scores: torch.Tensor, experts: torch.Tensor, renormalize: bool) -> torch.Tensor:
    """The scores of the chosen experts [T, k], float32, optionally renormalised to sum 1."""
    weights = scores.gather(-1, experts).float()
    if renormalize:
        # The clamp only matters for sigmoid scores that all underflow to 0.
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return weights


def expert_counts(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """How many token copies each expert received, float32 [E] (no gradient)."""
    return torch.bincount(experts.reshape(-1), minlength=num_experts).float()


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch/GShard load-balancing loss `E * sum_e f_e * P_e` (unweighted; 1.0 when uniform).

    probs: [T, E] router probabilities (rows sum to 1); experts: [T, k] chosen ids.
    f_e = share of the T*k assignments that went to e; P_e = mean probability of e.
    Only P carries a gradient, as in the papers.
    """
    f = expert_counts(experts, num_experts) / max(experts.numel(), 1)
    p = probs.float().mean(0)
    return num_experts * torch.dot(f, p)


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss (ST-MoE): mean over tokens of logsumexp(logits)^2 (unweighted)."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def cv_squared(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation var(x) / mean(x)^2 (Shazeer et al. 2017); 0 for one value."""
    x = x.float()
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.var() / (x.mean().square() + eps)


def smooth_load(
    clean: torch.Tensor,
    noisy: torch.Tensor,
    noise: torch.Tensor,
    noise_std: torch.Tensor,
    threshold_in: torch.Tensor,
    threshold_out: torch.Tensor,
    membership: LoadMembership,
) -> torch.Tensor:
    """Expected tokens per expert under the gate noise, [E]: sum over tokens of P(expert chosen).

    threshold_in [T, 1] is the best value NOT chosen (what a chosen expert must stay above),
    threshold_out [T, 1] the weakest value chosen (what an expert outside must beat); the other
    noisy logits are held fixed (Shazeer et al. 2017). Whether an expert counts as "in" is
    decided on its noisy logit (`noisy_logit`, the paper) or, as LLaMA-MoE's code does, on the
    noise term alone (`noise`).
    """
    is_in = (noisy if membership == "noisy_logit" else noise) > threshold_in
    threshold = torch.where(is_in, threshold_in, threshold_out)
    z = (clean - threshold) / noise_std
    # The standard normal CDF without torch.distributions (no device bookkeeping).
    return (0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))).sum(0)


def cv_balance_loss(experts: torch.Tensor, weights: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
    """LLaMA-MoE's balance loss CV^2(importance) + CV^2(load) (unweighted); importance = the summed
    combine weights per expert, load = tokens per expert (a count or `smooth_load`)."""
    importance = weights.new_zeros(load.shape[0]).index_add(0, experts.reshape(-1), weights.reshape(-1))
    return cv_squared(importance) + cv_squared(load)


def balance_probs(scores: torch.Tensor, score: Score) -> torch.Tensor:
    """Probabilities for the load-balancing loss: sigmoid scores are normalised per token."""
    if score == "sigmoid":
        return scores / scores.sum(-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    return scores


def standard_aux_losses(
    logits: torch.Tensor,
    scores: torch.Tensor,
    experts: torch.Tensor,
    *,
    score: Score,
    aux_loss_coef: float,
    z_loss_coef: float,
) -> dict[str, torch.Tensor]:
    """The weighted `load_balance` and `z_loss` entries, each only when its coefficient is nonzero."""
    losses: dict[str, torch.Tensor] = {}
    if aux_loss_coef:
        probs = balance_probs(scores, score)
        losses["load_balance"] = aux_loss_coef * load_balancing_loss(probs, experts, logits.shape[-1])
    if z_loss_coef:
        losses["z_loss"] = z_loss_coef * z_loss(logits)
    return losses


def standard_routing(
    logits: torch.Tensor,
    scores: torch.Tensor,
    experts: torch.Tensor,
    *,
    score: Score,
    renormalize: bool,
    aux_loss_coef: float,
    z_loss_coef: float,
) -> Routing:
    """The `Routing` for chosen `experts`: `combine_weights` and `standard_aux_losses`."""
    return Routing(
        experts=experts,
        weights=combine_weights(scores, experts, renormalize),
        logits=logits,
        aux_losses=standard_aux_losses(
            logits,
            scores,
            experts,
            score=score,
            aux_loss_coef=aux_loss_coef,
            z_loss_coef=z_loss_coef,
        ),
    )
