"""Every router call in training is checked against the Routing contract; a violation names the
router plugin and what it returned (exit 2), and value checks can be turned off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moelight.cli.main import main
from moelight.moe.layer_context import LayerContext
from moelight.moe.routing_contract import RoutingContractError, check_routing, contract_problems
from moelight.registry import load_plugin_modules, routers

FAULTY = Path(__file__).parent / "faults" / "faulty_router.py"
T, D, E, K = 12, 16, 8, 2

EXPECTED = {
    "wide": "experts must be int64 [12, 2], got int64 [12, 3]",
    "int32": "experts must be int64 [12, 2], got int32 [12, 2]",
    "short_logits": "logits must be [12, 8], got float32 [12, 7]",
    "out_of_range": "expert ids must be in [0, 8), got min 0 max 8",
    "nan_weights": "weights must be finite, got 24 non-finite of 24",
    "duplicate": "a token must not visit an expert twice",
}
VALUE_FAULTS = ("out_of_range", "nan_weights", "duplicate")


def faulty(fault: str):
    load_plugin_modules([str(FAULTY)])
    ctx = LayerContext(hidden_size=D, num_experts=E, top_k=K, layer_index=0)
    return routers.build({"name": "faulty", "fault": fault}, ctx), ctx


@pytest.mark.parametrize("fault", EXPECTED)
def test_each_violation_is_named(fault):
    router, ctx = faulty(fault)
    routing = router.train()(torch.randn(T, D))
    with pytest.raises(RoutingContractError) as err:
        check_routing(routing, T, ctx, router)
    assert "router 'faulty' (FaultyRouter)" in str(err.value) and EXPECTED[fault] in str(err.value)
    assert bool(contract_problems(routing, T, ctx, values=False)) == (fault not in VALUE_FAULTS)


def test_a_good_routing_passes_and_the_bundled_routers_keep_the_contract():
    for name in ("none", "topk", "balanced"):
        router, ctx = faulty("none")
        if name != "none":
            router = routers.build({"name": name}, ctx)
        assert contract_problems(router.train()(torch.randn(T, D)), T, ctx) == []


@pytest.mark.parametrize("fault,code", [("wide", 2), ("out_of_range", 2)])
def test_fit_stops_with_one_message_naming_the_router(tiny, capsys, fault, code):
    argv = ["fit", *tiny, f"plugins=[{FAULTY}]", "router.name=faulty", f"router.fault={fault}"]
    assert main(argv + ["router.from_call=2", "router.layer=1"]) == code
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("error:") == 1 and "router 'faulty'" in err and "layer 1" in err
    assert EXPECTED[fault].replace(f"[{T},", "[128,") in err  # 4 sequences x 32 tokens


def test_value_checks_can_be_turned_off(tiny):
    # A duplicated expert is only a value problem: the sorted dispatcher runs it (twice).
    argv = ["fit", *tiny, f"plugins=[{FAULTY}]", "router.name=faulty", "router.fault=duplicate"]
    assert main(argv + ["trainer.check_routing_values=false"]) == 0
