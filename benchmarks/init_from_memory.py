"""Peak host memory of `model.init_from` per rank, against the rank's shard, for every checkpoint kind.

    python benchmarks/init_from_memory.py [--dir DIR] [--ep 1 2 4] [--json OUT]

Generates a ~300 MB fp32 checkpoint (8 MoE layers of 8 experts; written as model.safetensors,
a Lightning .ckpt and a sharded DCP directory) into a temporary directory, then, for each
expert-parallel size P and kind, loads rank 0's part in a fresh process
(tests/init_from_peak_worker.py) and records the RSS high-water mark above the RSS before the
model was built. `whole-file` is the loading moelight did before (model built and initialised,
whole file read, rows taken, copied in), measured the same way side by side. Prints a table and
writes JSON. Goal (issue 19): peak <= shard + 10%.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "init_from_peak_worker.py"
MODEL = ["model.n_layers=8", "model.expert_ffn_hidden_size=1536"]  # ~300 MB with the worker's defaults
MB = 1024 * 1024


def measure(directory: Path, loader: str, kind: str, ep: int) -> dict:
    cmd = [
        sys.executable,
        str(WORKER),
        str(directory),
        loader,
        "--ep",
        str(ep),
        "--kind",
        kind,
        "--model",
        *MODEL,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where the generated checkpoint goes (default: a temporary directory)")
    parser.add_argument("--ep", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", default="init_from_memory.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.dir or tmp)
        directory.mkdir(parents=True, exist_ok=True)
        rows = []
        for ep in args.ep:
            for kind in ("safetensors", "ckpt", "sharded"):
                for loader in ("sharded", "whole-file"):
                    if loader == "whole-file" and kind == "sharded":
                        continue  # it went through a consolidated .ckpt: the ckpt row
                    rows.append(measure(directory, loader, kind, ep))
    print(
        f"{'P':>2} {'kind':<12} {'loader':<11} {'file MB':>8} {'shard MB':>9} {'peak MB':>8} {'peak/shard':>10}"
    )
    for r in rows:
        ratio = r["peak_rss_bytes"] / r["shard_bytes"]
        print(
            f"{r['ep']:>2} {r['kind']:<12} {r['loader']:<11} {r['file_bytes'] / MB:>8.1f} "
            f"{r['shard_bytes'] / MB:>9.1f} {r['peak_rss_bytes'] / MB:>8.1f} {ratio:>10.2f}"
        )
        if not r["equal"]:
            raise SystemExit(f"loaded weights differ from the file: {r}")
    Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
