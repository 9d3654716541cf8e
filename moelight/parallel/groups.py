"""Process groups of expert parallelism: the world is a (edp, ep) mesh.

World size W = D x P. Ranks `[i*P, (i+1)*P)` form expert-parallel group i: together they hold
all experts (rank r holds the experts placed on device r % P) and exchange tokens. The ranks with
the same r % P hold the same experts; they form an expert-data-parallel (edp) group, across
which expert gradients are reduced. Consecutive ranks share an EP group so that, on GPUs, the
all2all stays within a node where it can.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from moelight.errors import ConfigError
from moelight.moe.dispatch import ExpertParallelContext


def check_world_size(world_size: int, expert_parallel: int) -> None:
    if world_size % expert_parallel:
        raise ConfigError(
            "parallel.expert_parallel",
            f"{expert_parallel} must divide the world size {world_size} (trainer.devices x trainer.num_nodes); "
            f"allowed: {', '.join(str(p) for p in range(1, world_size + 1) if world_size % p == 0)}",
        )


@dataclass
class ExpertParallelGroups:
    ep: ExpertParallelContext  # this rank's place among the ranks that split the experts
    edp_group: object  # ranks holding the same experts (their gradients are summed)
    edp_size: int
    world_size: int
    mesh: DeviceMesh | None = None  # the (edp, ep) mesh; FSDP shards experts over mesh["edp"]


def build_groups(expert_parallel: int, device_type: str) -> ExpertParallelGroups:
    """Called on every rank once the default process group exists."""
    world = dist.get_world_size()
    check_world_size(world, expert_parallel)
    mesh = init_device_mesh(
        device_type, (world // expert_parallel, expert_parallel), mesh_dim_names=("edp", "ep")
    )
    ep = ExpertParallelContext(
        rank=mesh.get_local_rank("ep"), size=expert_parallel, group=mesh.get_group("ep")
    )
    return ExpertParallelGroups(
        ep=ep,
        edp_group=mesh.get_group("edp"),
        edp_size=world // expert_parallel,
        world_size=world,
        mesh=mesh,
    )
