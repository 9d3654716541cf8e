"""The headline configuration end to end: C2R with placement collaborators under expert parallelism."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fit_ep2_c2r_placement_sends_one_row_per_token(tmp_path, run_env):
    # The shipped profile's 2-device placement; each token's 2 experts then share one device.
    placement = ROOT / "recipes" / "profiles" / "quickstart-topk" / "placement-2.json"
    args = [o for o in TINY if not o.startswith("model.n_layers")]
    proc = subprocess.run(
        [sys.executable, "-m", "moelight", "fit", str(ROOT / "recipes" / "ep-cpu.yaml"), *args,
         "router.name=c2r", "router.collaborators=placement", "router.top_t=3",
         f"parallel.placement={placement}", "trainer.log_every_n_steps=1", f"trainer.out_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=run_env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(next((tmp_path / "run").glob("logs/version_*/metrics.csv")).open()))
    devices = [float(r["dispatch/devices_per_token"]) for r in rows if r.get("dispatch/devices_per_token")]
    assert devices and all(d == 1.0 for d in devices), devices
