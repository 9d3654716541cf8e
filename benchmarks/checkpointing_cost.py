"""Step time of each activation-checkpointing mode, side by side in one CPU run.

    python benchmarks/checkpointing_cost.py [--repeats 8] [key.path=value ...]

One model per mode from the same seed (the recipe's, default: the embedded quickstart at
data.batch_size x data.seq_len), forward + backward + AdamW on the same random batch; the modes
are timed round-robin (order rotated each round) and reported as the median step time and its
ratio to `none`, with the measured peak bytes of a step and the load average.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from moelight.memory.measure import measured_step_peak
from moelight.model.build import build_model
from moelight.recipe import load_recipe

MODES = ("none", "attention", "moe", "full")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    steps, peaks = {}, {}
    for mode in MODES:
        recipe = load_recipe(None, [*a.overrides, f"trainer.activation_checkpointing={mode}"])
        torch.manual_seed(recipe.seed)
        model = build_model(recipe)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randint(0, recipe.model.vocab_size, (recipe.data.batch_size, recipe.data.seq_len))

        def step(model=model, opt=opt, x=x, chunk=recipe.trainer.loss_chunk_tokens) -> None:
            (model(x, targets=x, loss_chunk_tokens=chunk) + model.aux_loss()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm-up
        steps[mode] = step
        peaks[mode] = measured_step_peak(recipe)
    times = {m: [] for m in MODES}
    for r in range(a.repeats):
        order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
        for mode in order:
            t0 = time.perf_counter()
            steps[mode]()
            times[mode].append(time.perf_counter() - t0)
    base = statistics.median(times["none"])
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"overrides: {' '.join(a.overrides) or '(quickstart)'}; repeats {a.repeats}; load average {load}")
    print("| mode | median step (s) | ratio to none | measured peak (MB) |")
    print("|---|---|---|---|")
    for mode in MODES:
        med = statistics.median(times[mode])
        print(f"| {mode} | {med:.3f} | {med / base:.2f} | {peaks[mode] / 1e6:.1f} |")


if __name__ == "__main__":
    main()
