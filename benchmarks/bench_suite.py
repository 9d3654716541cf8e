"""The benchmark suites behind docs/benchmarks.md, as one command each.

    python benchmarks/bench_suite.py cpu --out bench-results/cpu     # this machine's CPU
    python benchmarks/bench_suite.py gpu --out bench-results/gpu     # on a CUDA machine (H100)
    python benchmarks/bench_suite.py comm --data data/c2r-paper --out bench-results/comm

Every run is a `moelight bench ...` command (printed before it runs), writing its table to the
terminal, its JSON to --out and the same tables as Markdown next to it (for docs/benchmarks.md). Candidates that are not installed (e.g. megablocks without
CUDA) stop the GPU suite with the install hint rather than being silently left out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from moelight.bench.report import markdown
from moelight.cli.main import main as moelight_main

LAYER_CPU = ["cpu-tiny", "cpu-small", "cpu-many"]
LAYER_GPU = ["llama-moe-3.5b", "qwen1.5-moe-a2.7b"]


def cpu_suite(out: Path, repeats: int, threads: int) -> list[list[str]]:
    cmds = [
        [
            *("bench", "layer", "--preset", preset, "--device", "cpu", "--threads", str(threads)),
            *("--dispatchers", "sorted,grouplocal,hf-loop,gemm-only", "--baseline", "hf-loop"),
            *("--repeats", str(repeats), "--json", str(out / f"layer-{preset}.json")),
        ]
        for preset in LAYER_CPU
    ]
    cmds.append(
        [
            *("bench", "step", "recipes/quickstart.yaml", "--device", "cpu", "--threads", str(threads)),
            *("--dispatchers", "sorted,grouplocal,hf-loop", "--baseline", "hf-loop"),
            *("--repeats", str(max(5, repeats // 2)), "--json", str(out / "step-quickstart.json")),
        ]
    )
    return cmds


def gpu_suite(out: Path, repeats: int) -> list[list[str]]:
    cmds = []
    for preset in LAYER_GPU:
        # 16k tokens, bf16 (the presets' defaults): grouplocal vs MegaBlocks, with the GEMM floor.
        cmds.append(
            [
                *("bench", "layer", "--preset", preset, "--device", "cuda"),
                *(
                    "--dispatchers",
                    "megablocks,grouplocal,sorted,gemm-only,hf-loop",
                    "--baseline",
                    "megablocks",
                ),
                *("--repeats", str(repeats), "--json", str(out / f"layer-{preset}.json")),
            ]
        )
    cmds.append(
        [
            *("bench", "step", "recipes/quickstart.yaml", "--device", "cuda", "trainer.precision=bf16-mixed"),
            *("data.batch_size=64", "data.seq_len=512", "model.hidden_size=512", "model.n_heads=8"),
            *("model.expert_ffn_hidden_size=1024", "--dispatchers", "megablocks,grouplocal,sorted"),
            *("--baseline", "megablocks", "--repeats", str(repeats), "--json", str(out / "step-gpu.json")),
        ]
    )
    return cmds


def comm_suite(out: Path, data: Path) -> list[list[str]]:
    return [
        [
            *("bench", "comm", "--preset", "llama-moe-3.5b"),
            *("--profile", str(data / "llama_moe_base_collaboration.npy")),
            *("--json", str(out / "comm-llama-base.json")),
        ],
        [
            *("bench", "comm", "--preset", "llama-moe-3.5b"),
            *("--profile", str(data / "llama_moe_topt_1_collaboration.npy")),
            *("--json", str(out / "comm-llama-topt1.json")),
        ],
        [
            *("bench", "comm", "--preset", "qwen1.5-moe-a2.7b", "--top-t", "30"),
            *("--profile", str(data / "qwen1.5_moe_a2.7b_collaborative_list.npy")),
            *("--json", str(out / "comm-qwen.json")),
        ],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suite", choices=["cpu", "gpu", "comm"])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU suite: torch threads (1 steadies shared machines)"
    )
    parser.add_argument(
        "--data", type=Path, help="comm suite: the C2R reference data folder (data/c2r-paper)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.suite == "cpu":
        cmds = cpu_suite(args.out, args.repeats, args.threads)
    elif args.suite == "gpu":
        cmds = gpu_suite(args.out, args.repeats)
    else:
        if args.data is None:
            parser.error("the comm suite needs --data (the folder with the C2R .npy files)")
        cmds = comm_suite(args.out, args.data)
    for cmd in cmds:
        print(f"\n$ moelight {shlex.join(cmd)}", flush=True)
        code = moelight_main(cmd)
        if code:
            return code
        # Every command ends with `--json PATH`; a Markdown copy is ready to paste into the docs.
        result = Path(cmd[-1])
        result.with_suffix(".md").write_text(markdown(json.loads(result.read_text())) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
