"""Every multi-process strategy moelight builds waits at most `parallel.collective_timeout_s` on a
collective: the timeout reaches torch's process group through the strategy's public constructor,
whether the recipe, Lightning's "auto" or `--trainer.strategy NAME` picks the strategy."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from datetime import timedelta

import pytest
from conftest import TINY
from lightning.pytorch.strategies import DDPStrategy

from moelight.parallel.collective_timeout import devices_per_node, strategy_with_timeout
from moelight.parallel.strategy import ExpertParallelStrategy

# Loaded as a recipe plugin in every rank: records the timeout each process group is created with.
RECORDER = """
import json, os
import torch.distributed as dist

_init = dist.init_process_group


def init_process_group(backend=None, **kwargs):
    with open(os.path.join(os.environ["TIMEOUT_RECORD"], f"rank{kwargs['rank']}.json"), "w") as f:
        json.dump({"timeout_s": kwargs["timeout"].total_seconds(), "backend": str(backend)}, f)
    return _init(backend, **kwargs)


dist.init_process_group = init_process_group
"""


@pytest.mark.parametrize(
    "strategy, devices, expected",
    [
        ("auto", 1, str),  # one process: Lightning's single-device strategy, no process group
        ("auto", 2, DDPStrategy),  # several: the DDP Lightning's "auto" would pick, with the timeout
        ("ddp", 1, DDPStrategy),
        ("ddp_spawn", 2, DDPStrategy),
        ("expert_parallel", 2, ExpertParallelStrategy),
        ("single_device", 1, str),  # takes no timeout: left to Lightning
    ],
)
def test_named_and_auto_strategies_are_built_with_the_timeout(monkeypatch, strategy, devices, expected):
    seen: list[timedelta] = []
    original = DDPStrategy.__init__

    @functools.wraps(original)  # keeps the signature the timeout check reads
    def recording_init(self, *args, **kwargs):
        seen.append(kwargs.get("timeout"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(DDPStrategy, "__init__", recording_init)
    built = strategy_with_timeout(strategy, timedelta(seconds=7), "cpu", devices, 1)
    assert isinstance(built, expected)
    if expected is not str:
        assert seen[-1] == timedelta(seconds=7)
    else:
        assert built == strategy and not seen


def test_device_counts_follow_lightning():
    assert devices_per_node("cpu", 2) == 2
    assert devices_per_node("cpu", "auto") == 1  # CPU "auto" is one process in Lightning
    assert devices_per_node("cpu", [0, 1, 2]) == 3
    assert devices_per_node("gpu", "0,1") == 2


@pytest.mark.slow
def test_a_ddp_run_named_on_the_command_line_gets_the_recipes_timeout(tmp_path, run_env):
    # (the "auto" and recipe paths build their strategy the same way: unit-tested above)
    recorder = tmp_path / "record_timeout.py"
    recorder.write_text(RECORDER)
    record = tmp_path / "record"
    record.mkdir()
    argv = [
        *TINY,
        "trainer.max_steps=1",
        "trainer.limit_val_batches=1",
        f"trainer.out_dir={tmp_path / 'run'}",
    ]
    argv += [f"plugins=[{recorder}]", "parallel.collective_timeout_s=61", "trainer.accelerator=cpu"]
    argv += ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
    env = {**run_env, "TIMEOUT_RECORD": str(record)}
    proc = subprocess.run(
        [sys.executable, "-m", "moelight", "fit", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {p.name: json.loads(p.read_text()) for p in record.iterdir()}
    assert records == {
        "rank0.json": {"timeout_s": 61.0, "backend": "gloo"},
        "rank1.json": {"timeout_s": 61.0, "backend": "gloo"},
    }
