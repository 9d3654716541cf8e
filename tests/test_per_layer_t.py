"""Per-layer T: the predicted devices per token of C2R with T candidates, and the selection rule,
against a hand-computed 4-expert example."""

from __future__ import annotations

import pytest
import torch

from moelight.c2r.per_layer_t import choose_layer_top_t, predicted_devices_per_token
from moelight.errors import MoelightError

# 4 experts, devices {0, 1} and {2, 3}. Lists: 0 -> 1, 2, 3; 1 -> 0, 3, 2; 2 -> 3, 0, 1; 3 -> 2, 1, 0.
COUNTS = torch.tensor([[0, 5, 3, 2], [5, 0, 1, 4], [3, 1, 0, 6], [2, 4, 6, 0]], dtype=torch.float64)
PLACEMENT = torch.tensor([0, 0, 1, 1])
# By hand: w = (10, 10, 10, 12) / 42; remote share of the candidates' counts per expert:
# T=1: every first collaborator is on the same device -> 1.
# T=2: 3/8, 4/9, 3/9, 4/10 -> 1 + (10*3/8 + 10*4/9 + 10*3/9 + 12*4/10) / 42.
# T=3: 5/10, 5/10, 4/10, 6/12 -> 1 + 20/42.
HAND = {1: 1.0, 2: 1 + (10 * 3 / 8 + 10 * 4 / 9 + 10 * 3 / 9 + 12 * 4 / 10) / 42, 3: 1 + 20 / 42}


@pytest.mark.parametrize("t", [1, 2, 3])
def test_predicted_devices_per_token_by_hand(t):
    assert predicted_devices_per_token(COUNTS, PLACEMENT, t, 2) == pytest.approx(HAND[t], rel=1e-12)


def test_choose_layer_top_t_by_hand():
    # layer 1: the same experts, but every expert's best partner is on the other device
    swapped = torch.tensor([[0, 1, 5, 2], [1, 0, 2, 5], [5, 2, 0, 1], [2, 5, 1, 0]], dtype=torch.float64)
    counts = torch.stack([COUNTS, swapped])
    placements = torch.stack([PLACEMENT, PLACEMENT])
    # layer 1 at T=1: every token's second expert is remote -> 2 devices; no T fits 1.2
    assert predicted_devices_per_token(swapped, PLACEMENT, 1, 2) == pytest.approx(2.0)
    assert choose_layer_top_t(counts, placements, 2, 1.2) == [1, 1]
    assert choose_layer_top_t(counts, placements, 2, 1.40) == [2, 1]
    assert choose_layer_top_t(counts, placements, 2, 1.5) == [3, 1]
    # layer 1 at T=3: (1+2... ) remote shares 7/8 for all -> 1 + 7/8 = 1.875 < 2: T = 3 fits 1.9
    assert predicted_devices_per_token(swapped, PLACEMENT, 3, 2) == pytest.approx(1 + 7 / 8)
    assert choose_layer_top_t(counts, placements, 2, 1.9) == [3, 3]


def test_budget_below_one_is_an_error():
    with pytest.raises(MoelightError, match="budget"):
        choose_layer_top_t(COUNTS[None], PLACEMENT[None], 2, 0.5)
