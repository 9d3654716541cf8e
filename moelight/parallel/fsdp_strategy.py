"""`fsdp_expert_parallel`: Lightning's ModelParallelStrategy with FSDP2 on an (edp, ep) mesh.

On N ranks with expert parallelism P (P divides N and the number of experts):
- process groups: Lightning's data-parallel mesh over all N ranks for dense parameters, and the
  (edp, ep) = (N/P, P) mesh of groups.py: the LightningModule reads `ep_context` in
  `configure_model` and builds only its placement's experts; the all2all runs over `ep`;
- sharding: fsdp_plan.py (dense over all N ranks, experts over `edp`), applied in `setup` before
  the optimizer is built over the DTensor parameters;
- clipping: by the global norm over every shard of both meshes (grad_norm.py), through the
  LightningModule's public `configure_gradient_clipping` hook;
- checkpoints: the sharded, resharding format of checkpoint.py (each rank writes its shards,
  experts under global ids), so runs resume across N, P and the DDP path (fsdp_checkpoint.py).
No DDP wrapper and no patching: ModelParallelStrategy leaves the parallelisation to us.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from moelight.checkpoint.files import load_checkpoint_file
from moelight.moe.dispatch import ExpertParallelContext
from moelight.parallel.checkpoint import is_sharded, load_sharded, localize_full, save_sharded
from moelight.parallel.fsdp_checkpoint import load_into_sharded, local_expert_layout, localize_experts
from moelight.parallel.fsdp_plan import shard_model
from moelight.parallel.grad_norm import clip_sharded_grads
from moelight.parallel.groups import ExpertParallelGroups, build_groups, check_world_size


class FSDPExpertParallelStrategy(ModelParallelStrategy):
    strategy_name = "fsdp_expert_parallel"

    def __init__(
        self,
        expert_parallel: int | None = None,
        param_dtype: str = "float32",
        cpu_offload: bool = False,
        **kwargs: Any,
    ):
        """`expert_parallel`: P (None: all ranks); `param_dtype`: "float32" or "bfloat16" for
        compute; `cpu_offload`: FSDP2's CPUOffloadPolicy. Other arguments: ModelParallelStrategy's."""
        super().__init__(**kwargs)
        self._expert_parallel = expert_parallel
        self.param_dtype = param_dtype
        self.cpu_offload = cpu_offload
        self.groups: ExpertParallelGroups | None = None
        self.dense_mesh: DeviceMesh | None = None

    @property
    def expert_parallel(self) -> int:
        return self._expert_parallel or self.num_nodes * self.num_processes

    @property
    def ep_context(self) -> ExpertParallelContext | None:
        return self.groups.ep if self.groups is not None else None

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}  # every rank sees its own data

    # ---- process groups and sharding ---------------------------------------------------------

    def _configure_launcher(self) -> None:
        # Runs when the Trainer is built, before any process is launched: fail once, cleanly.
        check_world_size(self.num_nodes * self.num_processes, self.expert_parallel)
        super()._configure_launcher()

    def setup_environment(self) -> None:
        super().setup_environment()
        device = self.root_device.type
        self.groups = build_groups(self.expert_parallel, device)
        lightning_dp = self.device_mesh["data_parallel"]
        self.dense_mesh = (
            lightning_dp
            if lightning_dp.size() == self.world_size
            else init_device_mesh(device, (self.world_size,), mesh_dim_names=("dp",))
        )

    def setup(self, trainer) -> None:
        shard_model(
            self.lightning_module.model,
            self.dense_mesh,
            self.groups.mesh["edp"],
            param_dtype=self.param_dtype,
            cpu_offload=self.cpu_offload,
        )
        super().setup(trainer)

    def model_to_device(self) -> None:
        if not self.cpu_offload:  # fully_shard placed the shards; offloaded ones stay in CPU memory
            super().model_to_device()

    def clip_grad_norm(self, optimizer, max_norm: float) -> torch.Tensor:
        """Clip by the norm of the whole model's gradient; returns that norm."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return clip_sharded_grads(params, max_norm)

    # ---- checkpoints ------------------------------------------------------------------------

    def lightning_module_state_dict(self) -> dict[str, Any]:
        return self.lightning_module.state_dict()  # DTensor shards; saved by save_checkpoint

    def optimizer_state(self, optimizer) -> dict[str, Any]:
        return getattr(optimizer, "optimizer", optimizer).state_dict()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None
    ) -> None:
        module = self.lightning_module
        save_sharded(
            localize_experts(checkpoint, module, self.optimizers),
            Path(self.broadcast(str(filepath))),
            module,
            self.optimizers,
            ep_rank=self.groups.ep.rank,
            expert_parallel=self.expert_parallel,
            layout=local_expert_layout(module),
        )

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(str(checkpoint_path)))
        module = self.lightning_module
        if is_sharded(path):
            checkpoint = load_sharded(path, module, self.optimizers)
        else:  # a single-process .ckpt (all experts in order): take this rank's rows
            full = load_checkpoint_file(path)  # weights only: a checkpoint never runs code
            checkpoint = localize_full(full, module, self.optimizers)
        load_into_sharded(checkpoint, module, self.optimizers)
        return checkpoint


if "fsdp_expert_parallel" not in StrategyRegistry:
    StrategyRegistry.register(
        "fsdp_expert_parallel",
        FSDPExpertParallelStrategy,
        description="FSDP2 on one (edp, ep) mesh: dense parameters over all ranks, experts over "
        "the ranks holding the same experts",
    )
