"""`moelight bench ep` repeats, limit and overlap projection: the arithmetic on synthetic
measurements, recomputed here by hand (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from moelight.bench import ep
from moelight.bench.link import EmulatedLink
from moelight.errors import MoelightError
from moelight.recipe import load_recipe

RECIPE = "recipes/ep-bench.yaml"


def test_overlap_projection_hides_transfer_behind_expert_compute_not_latency():
    recipe = load_recipe(RECIPE, ["parallel.expert_parallel=4"])
    link = EmulatedLink("x", 5.0, 1.0, rate_per_rank=1e6, latency_s=2e-3, literal_latency_s=2e-3, note="")
    counters = {"remote_rows": 4 * 4 * 3 * 100.0}  # steps 3 x procs 4 x layers 4 x 100 rows
    b, blocking = ep.predicted_ms(recipe, counters, 3, 4, 20, 2, link, overhead_ms=1.0)
    latency_ms = 20 * (2.0 + 1.0)
    transfer_ms = b / 1e6 * 1e3
    assert blocking == pytest.approx(latency_ms + transfer_ms)
    _, hidden = ep.predicted_ms(
        recipe, counters, 3, 4, 20, 2, link, overhead_ms=1.0, hideable_ms=transfer_ms / 4
    )
    assert hidden == pytest.approx(latency_ms + transfer_ms * 3 / 4)
    _, all_hidden = ep.predicted_ms(recipe, counters, 3, 4, 20, 2, link, 1.0, hideable_ms=10 * transfer_ms)
    assert all_hidden == pytest.approx(latency_ms)  # latency is slept when a call is issued


def test_expert_ms_per_step_is_flops_over_rate():
    recipe = load_recipe(RECIPE, ["parallel.expert_parallel=4"])
    m = recipe.model
    rows = recipe.data.batch_size * recipe.data.seq_len * m.top_k
    flops = 4 * 18 * rows * m.hidden_size * m.expert_ffn_hidden_size  # 4 MoE layers
    assert ep.expert_ms_per_step(recipe, 4, 2.0) == pytest.approx(flops / 2e9 * 1e3)


def fake_run(speedups, loads):
    """A `run` that returns one synthetic table per call, and the load averages os.getloadavg gives."""
    calls = iter(range(len(speedups)))

    def run(args):
        i = next(calls)
        rows = [
            {"config": "base", "speedup": 1.0, "all2all_share": 0.6, "predicted_over_measured": 1.0,
             "fraction_to_limit": 0.0, "devices_per_token": 1.8, "all2all_ms": 600.0, "limit_ms": 400.0,
             "step": {"median_ms": 1000.0}},
            {"config": "fast", "speedup": speedups[i], "all2all_share": 0.3, "predicted_over_measured": 1.1,
             "fraction_to_limit": (1000 - 1000 / speedups[i]) / (1000 - 380.0), "devices_per_token": 1.0,
             "all2all_ms": 200.0, "limit_ms": 380.0, "step": {"median_ms": 1000 / speedups[i]}},
        ]  # fmt: skip
        limit = {"config": "limit: fast without all2all", "limit_ms": 380.0, "speedup": 1000 / 380}
        return {"links": {"infiniband": {"description": "d", "rows": rows, "limit": limit}}}

    it = iter(loads)
    return run, lambda: next(it)


def test_run_repeated_medians_ranges_and_load_flag(monkeypatch):
    run, loadavg = fake_run(
        [1.5, 1.2, 1.4], [(0.5,) * 3, (0.7,) * 3, (0.6,) * 3, (3.5,) * 3, (0.2,) * 3, (0.3,) * 3]
    )
    monkeypatch.setattr(ep, "run", run)
    monkeypatch.setattr(ep.os, "getloadavg", loadavg)
    monkeypatch.setattr(ep.os, "cpu_count", lambda: 2)
    res = ep.run_repeated(None, 3)
    fast = res["summary"]["infiniband"]["configs"]["fast"]
    assert fast["speedup"] == {"median": 1.4, "min": 1.2, "max": 1.5}
    assert fast["step_ms"]["median"] == pytest.approx(1000 / 1.4)
    assert fast["fraction_to_limit"]["max"] == pytest.approx((1000 - 1000 / 1.5) / 620)
    assert [r["loaded"] for r in res["runs"]] == [False, True, False]  # 3.5 > 2 cores after repeat 2
    assert res["loaded"] is True
    assert res["load"] == [[0.5, 0.7], [0.6, 3.5], [0.2, 0.3]]


def test_repeats_below_one():
    with pytest.raises(MoelightError, match="repeats"):
        ep.run_repeated(None, 0)
    proc = subprocess.run(
        [sys.executable, "-m", "moelight", "bench", "ep", "--repeats", "0"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "--repeats" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_calibration_for_narrow_experts_keeps_the_reference_ratio():
    from moelight.bench.link import PRESETS, REFERENCES, calibrate

    ib, ref = PRESETS["infiniband"], REFERENCES["llama-moe"]
    cpu, layer = 5e9, 1e9
    plain = calibrate(ib, cpu, layer, ref)
    narrow = calibrate(ib, cpu, layer, ref, run_flops_per_row_byte=96.0)  # FFN 64, fp32: 6 x 64 / 4
    assert narrow.rate_per_rank == pytest.approx(plain.rate_per_rank * ref.flops_per_row_byte() / 96.0)
    assert narrow.latency_s == plain.latency_s
    # a row's transfer over its expert compute: the reference's (4128 FLOPs per row-byte) at the GPU
    row_bytes, row_flops = 256.0, 96.0 * 256.0
    ratio = (row_bytes / narrow.rate_per_rank) / (row_flops / cpu)
    real = (1 / (ib.bandwidth_gbs * 1e9)) / (ref.flops_per_row_byte() / (ib.gpu_tflops * 1e12))
    assert ratio == pytest.approx(real)


def test_assemble_limit_and_fraction_to_limit_by_hand():
    """limit = the configuration's per-step (step - exposed all2all), median; fraction = (baseline -
    step) / (baseline - limit); the table's limit row is the lowest limit."""
    configs = {
        "base": ["dispatcher.rows=per_expert", "dispatcher.overlap=false"],
        "ov": ["dispatcher.rows=per_device"],
    }
    args = ep.Args(
        RECIPE, ["parallel.expert_parallel=2"], 2, 3, 1, 1, ["infiniband"], None, config_overrides=configs
    )
    recipe = load_recipe(RECIPE, args.overrides)
    link = EmulatedLink("infiniband", 5.0, 1e5, 1e6, 1e-3, 1.0, "n")
    counters = {"tokens": 100.0, "rows": 200.0, "remote_rows": 60.0, "bytes": 1e4, "device_visits": 150.0}

    def entry(step, a2a):
        return {"counters": counters, "step_ms": step, "all2all_ms": a2a, "skew_ms": [0.0] * 3,
                "bytes_per_rank_step": [1.0] * 3, "calls_per_step": 20}  # fmt: skip

    raw = {
        "links": {
            "infiniband": {
                "link": link.as_dict(),
                "configs": {
                    "base": entry([1000.0, 1100.0, 900.0], [600.0, 700.0, 500.0]),
                    "ov": entry([500.0, 520.0, 480.0], [60.0, 80.0, 40.0]),
                },
            }
        },  # fmt: skip
        "cpu_gflops_per_rank": [5.0, 5.0],
        "call_overhead_ms": 1.0,
    }
    table = ep.assemble(args, recipe, raw, 1.0)["links"]["infiniband"]
    base, ov = table["rows"]
    assert base["limit_ms"] == pytest.approx(400.0) and base["fraction_to_limit"] == pytest.approx(0.0)
    assert ov["limit_ms"] == pytest.approx(440.0)
    assert ov["fraction_to_limit"] == pytest.approx((1000 - 500) / (1000 - 440))
    assert ov["overlap"] and not base["overlap"]
    assert table["limit"]["limit_ms"] == pytest.approx(400.0)
    assert table["limit"]["speedup"] == pytest.approx(1000 / 400)
