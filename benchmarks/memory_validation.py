"""The memory plan beside measured peaks on CPU: N = 1 (one process) and N = 2, 4 (gloo, DDP or
FSDP2), with and without activation checkpointing. Prints the markdown table of docs/benchmarks.md.

    python benchmarks/memory_validation.py [--devices 1,2,4]
"""

from __future__ import annotations

import argparse

from moelight.memory.distributed_measure import Case, measure
from moelight.memory.measure import measured_step_peak
from moelight.memory.plan import plan, setup_from_recipe
from moelight.recipe import load_recipe

BASE = ("data.seq_len=128", "data.batch_size=8")
SINGLE = {
    "quickstart shape": (),
    "vocab 8000, loss in one piece": ("model.vocab_size=8000", "trainer.loss_chunk_tokens=0"),
    "vocab 8000, loss chunks of 128": ("model.vocab_size=8000", "trainer.loss_chunk_tokens=128"),
    "Qwen-like (shared expert, gate, untied)": (
        "model.shared_expert_ffn_hidden_size=256",
        "model.shared_expert_gate=true",
        "model.tie_embeddings=false",
    ),
    "wide experts (d 256, ffn 512, top-4)": (
        "model.hidden_size=256",
        "model.expert_ffn_hidden_size=512",
        "model.top_k=4",
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", default="1,2,4")
    devices = [int(d) for d in ap.parse_args().devices.split(",")]
    print(
        "| recipe (data 8 x 128, fp32) | N | sharding | checkpointing | plan (MB) | measured (MB) | plan / measured |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in devices:
        for name, extra in SINGLE.items() if n == 1 else [("quickstart shape", ())]:
            for mode in ("none", "attention", "moe", "full") if n == 1 else ("none", "full"):
                overrides = (*BASE, *extra, f"trainer.activation_checkpointing={mode}")
                for fsdp in (False,) if n == 1 else (False, True):
                    if n == 1:
                        recipe = load_recipe(None, list(overrides))
                        planned = plan(recipe, setup_from_recipe(recipe, device="cpu")).peak
                        measured = measured_step_peak(recipe)
                    else:
                        planned, measured = measure(Case(n, fsdp, overrides))
                    sharding = "-" if n == 1 else ("FSDP2" if fsdp else "DDP")
                    print(
                        f"| {name} | {n} | {sharding} | {mode} | {planned / 1e6:.1f} | {measured / 1e6:.1f} "
                        f"| {planned / measured:.3f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
