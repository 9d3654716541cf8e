"""`sorted` keeps the dispatcher contract and equals the per-token definition of an MoE FFN.

`check_dispatcher("sorted")` compares `sorted` with `moelight.testing.naive_moe` (a loop over
tokens and their experts), forward and gradients, in fp32 and bf16, with an idle expert.
"""

import torch

from moelight.api import ExpertWeights, LayerContext, Routing, dispatchers
from moelight.testing import check_dispatcher


def test_sorted_keeps_the_contract_and_equals_the_definition():
    check_dispatcher("sorted")


def test_sorted_counts_one_row_per_token_and_expert():
    ctx = LayerContext(hidden_size=8, num_experts=4, top_k=2, layer_index=0, ffn_hidden_size=8)
    disp = dispatchers.build({"name": "sorted"}, ctx, ExpertWeights(list(range(4)), 8, 8))
    disp(
        torch.randn(5, 8),
        Routing(torch.tensor([[0, 1], [1, 2], [3, 0], [2, 3], [0, 2]]), torch.rand(5, 2), None),
    )
    assert (disp.stats.tokens, disp.stats.rows, disp.stats.device_visits, disp.stats.bytes) == (5, 10, 5, 0)
