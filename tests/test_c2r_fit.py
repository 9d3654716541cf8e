"""The headline configuration end to end: C2R with placement collaborators under expert parallelism."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY
from safetensors.torch import load_file

from moelight.cli.main import main
from moelight.placement import load_placement

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fit_ep2_c2r_placement_sends_one_row_per_token(tmp_path, run_env):
    # The shipped profile's 2-device placement; each token's 2 experts then share one device.
    placement = ROOT / "recipes" / "profiles" / "quickstart-topk" / "placement-2.json"
    args = [o for o in TINY if not o.startswith("model.n_layers")]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "moelight",
            "fit",
            str(ROOT / "recipes" / "ep-cpu.yaml"),
            *args,
            "router.name=c2r",
            "router.collaborators=placement",
            "router.top_t=3",
            f"parallel.placement={placement}",
            "trainer.log_every_n_steps=1",
            f"trainer.out_dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        env=run_env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(next((tmp_path / "run").glob("logs/version_*/metrics.csv")).open()))
    devices = [float(r["dispatch/devices_per_token"]) for r in rows if r.get("dispatch/devices_per_token")]
    assert devices and all(d == 1.0 for d in devices), devices

    # The sharded EP checkpoint profiles like any other: every token's 2 experts share a device.
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() and not list(ckpt.parent.glob("last-v*"))  # one last checkpoint, not versions
    assert main(["profile", str(ckpt), "--out", str(tmp_path / "prof"), "--max-tokens", "512"]) == 0
    assert json.loads((tmp_path / "prof" / "profile.json").read_text())["tokens"] == 512
    # ... and evaluates like any other, with its placement-constrained C2R routing.
    assert main(["eval", str(ckpt), "--tasks", "moelight_python_mc", "--limit", "4"]) == 0
    profile = load_file(tmp_path / "prof" / "profile.safetensors")
    device_of = load_placement(str(placement), 4, 8, 2)
    for layer, (sets, counts) in enumerate(zip(profile["expert_sets"], profile["expert_set_counts"])):
        for experts in sets[counts > 0]:
            assert len({int(device_of[layer, e]) for e in experts}) == 1, (layer, experts)
