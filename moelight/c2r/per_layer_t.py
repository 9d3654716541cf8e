"""Per-layer T for C2R: each layer's candidate count chosen for a devices-per-token budget.

Layers differ in how concentrated their collaboration is: where an expert's first few
collaborators hold most of its co-activation, a small T keeps the pairs the model uses; where
collaboration is diffuse, the same T forbids many of them. Given a layer's co-activation counts C
and the expert placement the run will use, the expected distinct devices per token of C2R with T
candidates is predicted as

    dev(T) = 1 + (k - 1) * sum_e w_e * sum_{j in cand_T(e)} pi_e(j) * [device(j) != device(e)]

with w_e = e's share of all co-activation (how often e leads a token, approximately), cand_T(e)
e's first T collaborators (by decreasing C[e, j]) and pi_e(j) = C[e, j] / sum_{j' in cand_T(e)}
C[e, j'] (the candidates are chosen in proportion to how often the unconstrained model paired
them). For top-2 this is the exact expectation under that assumption; for k > 2 it counts each
off-device pick as a new device (an upper bound). The rule: per layer, the largest T in
[k - 1, E - 1] whose dev(T) is within the budget; if none is, T = k - 1 (the tightest).
"""

from __future__ import annotations

import torch

from moelight.errors import MoelightError


def _lists(counts: torch.Tensor) -> torch.Tensor:
    c = counts.double().clone()
    c.fill_diagonal_(float("-inf"))
    return c.sort(dim=1, descending=True, stable=True).indices


def predicted_devices_per_token(
    counts: torch.Tensor, placement: torch.Tensor, top_t: int, top_k: int
) -> float:
    """dev(T) of the module docstring for one layer: counts [E, E], placement [E]."""
    c = counts.double().clone()
    c.fill_diagonal_(0)
    lists = _lists(counts)[:, :top_t]  # [E, T]
    picked = c.gather(1, lists)  # [E, T]
    mass = picked.sum(1, keepdim=True)
    pi = torch.where(mass > 0, picked / mass.clamp_min(1e-300), torch.full_like(picked, 1.0 / top_t))
    remote = (placement[lists] != placement[:, None]).double()
    w = c.sum(1)
    w = w / w.sum() if w.sum() > 0 else torch.full_like(w, 1.0 / len(w))
    return float(1 + (top_k - 1) * (w * (pi * remote).sum(1)).sum())


def choose_layer_top_t(
    counts: torch.Tensor, placements: torch.Tensor, top_k: int, budget: float
) -> list[int]:
    """Per layer (counts [L, E, E], placements [L, E]): the largest T with dev(T) <= budget."""
    if budget < 1:
        raise MoelightError(f"devices-per-token budget {budget} must be >= 1 (every token visits a device)")
    layers, e, _ = counts.shape
    if top_k < 2 or top_k > e:
        raise MoelightError(f"top_k {top_k} must be in [2, {e}] for C2R")
    out = []
    for layer in range(layers):
        fits = [
            t
            for t in range(top_k - 1, e)
            if predicted_devices_per_token(counts[layer], placements[layer], t, top_k) <= budget + 1e-12
        ]
        out.append(max(fits) if fits else top_k - 1)
    return out
