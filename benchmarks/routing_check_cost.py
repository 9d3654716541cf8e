"""What the Routing contract check costs: a training step with value checks on vs off, and
shape-only, timed side by side (interleaved) in one run.

    python benchmarks/routing_check_cost.py [--repeats 30] [--warmup 3] [--device cpu|cuda]
        [--out bench-results/routing_check_cost.json] [key.path=value ...]

The model is the recipe's (default: the quickstart recipe, i.e. the embedded defaults) on random
tokens; a step is forward, backward and an AdamW update. `off` still checks shapes and dtypes
(metadata only); `on` adds the value reductions and their one host sync per MoE layer. Prints a
table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from moelight.bench.timing import interleaved, paired_results
from moelight.model.build import build_model
from moelight.recipe import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench-results/routing_check_cost.json")
    args = parser.parse_args()
    recipe = load_recipe(None, args.overrides)
    device = torch.device(args.device)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, s = recipe.data.batch_size, recipe.data.seq_len
    x = torch.randint(0, recipe.model.vocab_size, (b, s + 1), device=device)

    def step(values: bool):
        def run() -> None:
            for layer in model.moe_layers:
                layer.check_routing_values = values
            logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()) + model.aux_loss()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    times = interleaved(
        {"off": step(False), "on": step(True)}, repeats=args.repeats, warmup=args.warmup, device=device
    )
    tokens = b * s
    rows = paired_results(times, ["off", "on"], baseline="off", tokens=tokens)
    print(
        f"Routing contract check, training step, {device} ({tokens} tokens, {len(model.moe_layers)} MoE layers)"
    )
    print(f"{'value checks':<13} {'median ms':>10} {'q1':>8} {'q3':>8} {'off/on (paired)':>16}")
    for row in rows:
        print(
            f"{row['name']:<13} {row['median_ms']:>10.2f} {row['q1_ms']:>8.2f} {row['q3_ms']:>8.2f} "
            f"{row['speedup']:>16.3f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(UTC).isoformat(), "device": str(device), "tokens": tokens}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
