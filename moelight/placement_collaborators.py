"""Collaborator lists that follow an expert placement: route as on P devices in one process.

`c2r` with `collaborators: placement` takes its candidates from the run's own placement, which
a single-process run (expert_parallel = 1) does not have. The same routing is `collaborators:
profile` with `top_t = E/P - 1` and these lists: row i starts with the other experts on i's
device (most co-activated first), then the rest (most co-activated first), then i itself.
The frontier benchmark uses them to train placement-constrained C2R without P processes.
"""

from __future__ import annotations

import torch


def placement_collaborator_lists(placement: torch.Tensor, coactivation: torch.Tensor) -> torch.Tensor:
    """Collaborator lists [L, E, E] for a placement [L, E] and co-activation counts [L, E, E]."""
    layers, e = placement.shape
    out = torch.empty(layers, e, e, dtype=torch.long)
    ids = torch.arange(e)
    for layer in range(layers):
        counts = coactivation[layer].to(torch.float64)
        for i in range(e):
            same = placement[layer] == placement[layer, i]
            # Sort key: same device first, then more co-activation first, then lower id; i last.
            key = torch.stack([(~same).to(torch.float64), -counts[i], ids.to(torch.float64)], dim=1)
            key[i, 0] = 2
            order = sorted(range(e), key=lambda j, key=key: tuple(key[j].tolist()))
            out[layer, i] = torch.tensor(order)
    return out
