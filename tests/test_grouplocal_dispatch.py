"""`grouplocal` equals `sorted`: in one process (a local grouped dispatch) and over 2 gloo
processes (experts split, tokens exchanged by all_to_all; overlapped and blocking exchange),
forward and every gradient, for both row modes, fp32 and bf16, random routings, tokens whose experts all sit on the other rank, idle
experts and an empty rank; and its counters match the routing counted token by token.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moelight.api import ConfigError, ExpertParallelContext, ExpertWeights, LayerContext, Routing, dispatchers
from moelight.testing import check_dispatcher

WORKER = Path(__file__).with_name("ep_dispatch_worker.py")
sys.path.insert(0, str(WORKER.parent))
import ep_dispatch_worker as worker  # noqa: E402


def build(spec, e=6, d=16, f=24, k=2, dtype=torch.float32, placement=None):
    ctx = LayerContext(
        hidden_size=d, num_experts=e, top_k=k, layer_index=0, ffn_hidden_size=f, placement=placement
    )
    experts = ExpertWeights(list(range(e)), d, f, init_std=0.3).to(dtype)
    return ctx, experts, dispatchers.build(spec, ctx, experts)


@pytest.mark.parametrize("rows", ["per_device", "per_expert"])
def test_single_device_matches_sorted(rows):
    check_dispatcher("grouplocal", {"rows": rows})
    t, k = 41, 3
    ctx, experts, disp = build({"name": "grouplocal", "rows": rows}, k=k)
    disp(torch.randn(t, 16), Routing(torch.rand(t, 6).topk(k, dim=1).indices, torch.rand(t, k), None))
    assert disp.stats.tokens == t and disp.stats.device_visits == t and disp.stats.bytes == 0
    assert disp.stats.rows == (t if rows == "per_device" else t * k)


def test_placement_must_fit_the_group():
    placement = torch.arange(8) // 4  # two devices
    ctx = LayerContext(
        hidden_size=8, num_experts=8, top_k=2, layer_index=0, ffn_hidden_size=8, placement=placement
    )
    ep = ExpertParallelContext(rank=0, size=4)
    with pytest.raises(ConfigError, match="expert_parallel"):
        dispatchers.build({"name": "grouplocal"}, ctx, ExpertWeights([0, 1], 8, 8), ep)
    with pytest.raises(ConfigError, match="dispatcher.rows"):
        dispatchers.build({"name": "grouplocal", "rows": "per_token"}, ctx, ExpertWeights([0, 1], 8, 8))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("dispatch") / "results.json"
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
    return json.loads(out.read_text())


CASES = [name for name, _ in worker.cases()] + ["c2r-placement-per_device", "c2r-placement-per_expert"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_ranks_match_single_process_sorted(two_ranks, case):
    """Outputs, gradients (x, router weights, expert weights) and counters; see ep_dispatch_worker.py."""
    assert two_ranks[case] == "ok", two_ranks[case]
