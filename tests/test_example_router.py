"""The CONTRIBUTING.md example router, loaded from its file as a recipe would, against a brute-force rule."""

from pathlib import Path

import torch

from moelight.api import LayerContext, routers
from moelight.registry import load_plugin_modules

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "device_limited_router.py"


def test_device_limited_router_keeps_each_token_on_its_best_devices():
    load_plugin_modules([str(EXAMPLE)])
    placement = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    ctx = LayerContext(hidden_size=16, num_experts=8, top_k=3, layer_index=0, placement=placement)
    router = routers.build({"name": "device_limited", "max_devices": 2}, ctx)
    x = torch.randn(50, 16)
    r = router(x)
    probs = torch.softmax(router.gate(x).float(), -1)
    for t in range(50):
        best_per_device = [probs[t, placement == d].max() for d in range(4)]
        keep = sorted(range(4), key=lambda d: -best_per_device[d])[:2]
        allowed = [e for e in range(8) if int(placement[e]) in keep]
        want = sorted(allowed, key=lambda e: -probs[t, e])[:3]
        assert sorted(r.experts[t].tolist()) == sorted(want)
        assert len({int(placement[e]) for e in r.experts[t]}) <= 2
    torch.testing.assert_close(r.weights, probs.gather(1, r.experts))
