"""Measured per-rank peaks of a training step on N gloo processes, DDP or FSDP2, beside the plan.

Each rank builds the recipe's model with every expert (P = 1), wraps it in DistributedDataParallel
or FSDP2 (`fully_shard` per block, then the root, on a CPU DeviceMesh), runs two AdamW steps and
measures the second's peak of live bytes (moelight.memory.live_bytes) plus the state that
existed before it (parameter shards, moments). The largest rank's figure is reported.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from moelight.memory.live_bytes import peak_bytes, tensor_bytes
from moelight.memory.plan import plan, setup_from_recipe
from moelight.model.build import build_model
from moelight.recipe import load_recipe


@dataclass(frozen=True)
class Case:
    devices: int
    fsdp: bool
    overrides: tuple[str, ...]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local(t: torch.Tensor) -> torch.Tensor:
    to_local = getattr(t, "to_local", None)  # DTensor shards under FSDP2
    return to_local() if to_local is not None else t


def _rank(rank: int, case: Case, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=case.devices)
    try:
        recipe = load_recipe(None, list(case.overrides))
        torch.manual_seed(recipe.seed)
        model = build_model(recipe)
        if case.fsdp:
            mesh = init_device_mesh("cpu", (case.devices,))
            for block in model.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
            inner = model
        else:
            inner = model
            model = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        torch.manual_seed(recipe.seed + rank)
        shape = (recipe.data.batch_size, recipe.data.seq_len)
        x = torch.randint(0, recipe.model.vocab_size, shape)

        def step() -> None:
            loss = model(x, targets=x, loss_chunk_tokens=recipe.trainer.loss_chunk_tokens)
            (loss + inner.aux_loss()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()
        state = [_local(t) for t in [*model.parameters(), *model.buffers()]]
        state += [
            _local(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)
        ]
        if not case.fsdp:  # DDP's gradient buckets exist from the first backward on
            state += [b for b in getattr(model, "_bucket_views", [])]
        results[rank] = tensor_bytes(state) + peak_bytes(step)
    finally:
        dist.destroy_process_group()


def measure(case: Case) -> tuple[int, int]:
    """(planned peak, measured peak of the largest rank) in bytes."""
    recipe = load_recipe(None, list(case.overrides))
    planned = plan(recipe, setup_from_recipe(recipe, devices=case.devices, fsdp=case.fsdp, device="cpu")).peak
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(case, _free_port(), results), nprocs=case.devices, join=True)
        measured = max(results.values())
    return planned, measured
