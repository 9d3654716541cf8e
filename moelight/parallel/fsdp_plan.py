"""How the FSDP path shards a MoETransformer (torchtitan's composition of FSDP2 with expert parallelism).

On N ranks with expert parallelism P the (edp, ep) mesh is N/P x P. Then:
- each MoE layer's `ExpertWeights` is `fully_shard`ed over its `edp` dimension: the N/P ranks that
  hold the same experts. The all2all's autograd has already summed the gradient contributions of
  the P ranks of the EP group, so the reduction divides by N (not N/P): the gradient of the global
  mean loss, as for dense parameters. A rank whose experts received no token still joins the
  reduce-scatter (zeros), so collectives line up.
- each transformer block, then the root: `fully_shard`ed over all N ranks (attention, norms,
  routers, shared experts; embeddings and the head at the root).
Parameters are gathered in `param_dtype` for compute; the sharded master weights, the optimizer
state and the gradient reduction stay float32. `cpu_offload` keeps the sharded parameters,
gradients and optimizer state in CPU memory (the optimizer steps there).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def shard_model(
    model: torch.nn.Module,
    world_mesh: DeviceMesh,
    expert_mesh: DeviceMesh,
    param_dtype: str = "float32",
    cpu_offload: bool = False,
) -> None:
    """Apply FSDP2 to `model`, a `MoETransformer`, in place (experts first: a parent leaves
    already-sharded modules alone). Typed as a plain module: `moelight.model` reads the sharded
    checkpoints of this package, so this package does not import it back."""
    mp = MixedPrecisionPolicy(param_dtype=DTYPES[param_dtype], reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    world = world_mesh.size()
    for layer in model.moe_layers:
        experts = fully_shard(layer.experts, mesh=expert_mesh, mp_policy=mp, offload_policy=offload)
        experts.set_gradient_divide_factor(float(world))
        if expert_mesh.size() > 1 and dist.get_backend(expert_mesh.get_group()) != "nccl":
            # gloo has no pre-multiplied sum: sum, then divide. (Not with one rank: torch 2.13 then
            # divides twice, by the factor without a collective and again after it.)
            experts.set_force_sum_reduction_for_comms(True)
    for block in model.blocks:
        fully_shard(block, mesh=world_mesh, mp_policy=mp, offload_policy=offload)
    root = fully_shard(model, mesh=world_mesh, mp_policy=mp, offload_policy=offload)
    root.set_reduce_scatter_unused_params(True)  # every FSDP module below it, too
