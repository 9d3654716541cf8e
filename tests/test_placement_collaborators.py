"""Placement-following collaborator lists make `collaborators: profile` route as `collaborators: placement`."""

from __future__ import annotations

import pytest
import torch

from moelight.api import LayerContext, routers
from moelight.collaboration import collaborators_from_counts, is_collaborator_list
from moelight.placement_collaborators import placement_collaborator_lists

E, D = 16, 16


@pytest.mark.parametrize("devices", [2, 4])
def test_profile_lists_route_like_the_placement(devices):
    gen = torch.Generator().manual_seed(devices)
    placement = (torch.arange(E) // (E // devices))[torch.randperm(E, generator=gen)]
    counts = torch.randint(0, 1000, (E, E), generator=gen)
    counts = counts + counts.T
    lists = placement_collaborator_lists(placement[None], counts[None])[0]
    assert is_collaborator_list(lists)
    size = E // devices
    for i in range(E):
        head = lists[i, : size - 1].tolist()
        assert set(head) == {j for j in range(E) if placement[j] == placement[i] and j != i}
        c = [int(counts[i, j]) for j in head]
        assert c == sorted(c, reverse=True)  # most co-activated first
        assert lists[i, -1] == i
    x = torch.randn(300, D)
    routed = []
    for source, collab in (("profile", lists), ("placement", collaborators_from_counts(counts))):
        torch.manual_seed(0)
        ctx = LayerContext(
            hidden_size=D, num_experts=E, top_k=2, layer_index=0, placement=placement, collaborators=collab
        )
        router = routers.build({"name": "c2r", "top_t": size - 1, "collaborators": source}, ctx)
        routed.append(router(x).experts)
    assert torch.equal(routed[0], routed[1])
