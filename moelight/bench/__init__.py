"""Benchmarks behind `moelight bench`: a single MoE layer, a full training step, and an all2all model.

- `layer`: one MoE layer (router + dispatcher, forward + backward) per candidate dispatcher.
- `step`: a full optimizer step of a small `MoETransformer` built from a recipe.
- `comm`: projected all2all time per step from measured rows per token and a bandwidth.

Timing interleaves the candidates' repeats (round-robin, rotating the order) so that machine
drift hits every candidate alike; ratios against the baseline come from the same run.
"""
