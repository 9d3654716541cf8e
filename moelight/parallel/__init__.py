"""Expert parallelism: process groups, gradient sync, sharded checkpoints and the Lightning
strategy `expert_parallel` (registered in Lightning's StrategyRegistry on import of `.strategy`).
"""
