"""The memory plan against measured per-rank peaks on 2 and 4 gloo processes, DDP and FSDP2
(plain `fully_shard` per block and root), with and without activation checkpointing: +-10%."""

from __future__ import annotations

import pytest

from moelight.memory.distributed_measure import Case, measure

BASE = ("data.seq_len=128", "data.batch_size=8")


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", ["none", "full"])
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
@pytest.mark.parametrize("devices", [2, 4])
def test_plan_agrees_with_measured_peaks_per_rank(devices, fsdp, checkpointing):
    planned, measured = measure(
        Case(devices, fsdp, (*BASE, f"trainer.activation_checkpointing={checkpointing}"))
    )
    assert 0.9 <= planned / measured <= 1.1, f"plan {planned} vs measured {measured}"
