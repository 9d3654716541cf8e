"""The emulated interconnect (`moelight bench ep`): bytes cost time on a shaped link, and the bytes
the collectives carried equal the bytes counted from the dispatchers' rows.

The end-to-end run needs root, `unshare` and `tc` (a private network namespace with a shaped
loopback); elsewhere it is skipped with that reason. Without them the command exits 2 saying what
it needs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from moelight.bench import netns
from moelight.bench.link import PRESETS, REFERENCES, calibrate, parse_latency, parse_rate
from moelight.errors import MoelightError

TINY = [
    "model.n_layers=1",
    "model.hidden_size=32",
    "model.n_heads=2",
    "model.expert_ffn_hidden_size=64",
    "data.seq_len=32",
    "data.batch_size=2",
]


def test_without_root_the_link_is_refused(monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert "root" in netns.missing_requirements()
    with pytest.raises(MoelightError, match="needs root"):
        netns.require()
    monkeypatch.delenv(netns.ENV_PARENT_NS, raising=False)
    assert not netns.in_namespace()  # tc is never run on the machine's own devices
    with pytest.raises(MoelightError, match="refusing"):
        netns.shape(1e6, 2000)


def test_calibration_matches_flops_per_byte_and_latency_per_flop():
    ib, ref = PRESETS["infiniband"], REFERENCES["llama-moe"]
    cpu, layer = 20e9, ref.layer_flops() / 1000
    link = calibrate(ib, cpu, layer, ref)
    # FLOPs per byte on the wire: the GPU's and the CPU's agree.
    assert cpu / link.rate_per_rank == pytest.approx(ib.gpu_tflops * 1e12 / (ib.bandwidth_gbs * 1e9))
    # Latency over the layer's expert time: the real layer's at its real tokens per GPU.
    real = ib.latency_us * 1e-6 / (ref.layer_flops() / (ib.gpu_tflops * 1e12))
    assert link.latency_s / (layer / cpu) == pytest.approx(real)
    assert parse_rate("40mbit") == 5e6 and parse_rate("5MB") == 5e6
    assert parse_latency("500us") == pytest.approx(5e-4)


@pytest.mark.slow
@pytest.mark.skipif(
    netns.missing_requirements() is not None, reason=f"emulated link {netns.missing_requirements()}"
)
def test_shaped_link_costs_time_and_bytes_match(tmp_path):
    out = tmp_path / "ep.json"
    cmd = [sys.executable, "-m", "moelight", "bench", "ep", "--link", "none,2mbit", "--latency", "0ms",
           "--configs", "c2r-placement", "--steps", "2", "--warmup", "1", "--repeats", "1", "--json", str(out), *TINY]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    links = json.loads(out.read_text())["links"]
    free, shaped = links["none"]["rows"], links["custom"]["rows"]
    for a, b in zip(free, shaped):
        assert a["config"] == b["config"]
        assert b["step"]["median_ms"] > a["step"]["median_ms"]
        assert b["all2all_ms"] > a["all2all_ms"]
    for r in free + shaped:
        # Bytes handed to the collectives == bytes counted from the dispatchers' remote rows.
        assert r["measured_bytes_per_rank_step"] == pytest.approx(r["counted_bytes_per_rank_step"], rel=1e-12)
        assert r["remote_rows_per_token"] > 0
