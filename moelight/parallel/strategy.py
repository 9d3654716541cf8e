"""`expert_parallel`: a Lightning DDP strategy whose experts are split over P ranks.

- Process groups: a (edp, ep) DeviceMesh built after DDP's own process group (groups.py); the
  LightningModule reads `strategy.ep_context` in `configure_model` and builds only its experts.
- Gradients: dense parameters stay under DDP; expert parameters are kept out of DDP's all-reduce
  and reduced after backward over the ranks holding the same experts (grad_sync.py). Clipping
  uses the norm over all expert shards (`clip_grad_norm`, called from the LightningModule's
  public configure_gradient_clipping hook).
- Checkpoints: sharded and resharding (checkpoint.py); restored after setup, once the local
  experts and the optimizer exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch.nn.parallel import DistributedDataParallel

from moelight.moe.dispatch import ExpertParallelContext
from moelight.parallel.checkpoint import is_sharded, load_sharded, localize_full, save_sharded
from moelight.parallel.grad_sync import clip_by_global_norm, expert_parameters, reduce_expert_grads
from moelight.parallel.groups import ExpertParallelGroups, build_groups, check_world_size


class ExpertParallelStrategy(DDPStrategy):
    strategy_name = "expert_parallel"

    def __init__(self, expert_parallel: int | None = None, **kwargs: Any):
        """`expert_parallel`: P, the ranks that split the experts (None: all ranks)."""
        kwargs.setdefault("find_unused_parameters", False)  # experts are outside DDP
        super().__init__(**kwargs)
        self._expert_parallel = expert_parallel
        self.groups: ExpertParallelGroups | None = None
        self._expert_params: dict = {}

    @property
    def expert_parallel(self) -> int:
        return self._expert_parallel or self.num_nodes * self.num_processes

    @property
    def ep_context(self) -> ExpertParallelContext | None:
        return self.groups.ep if self.groups is not None else None

    # ---- process groups ---------------------------------------------------------------------

    def _configure_launcher(self) -> None:
        # Runs when the Trainer is built, before any process is launched: fail once, cleanly.
        check_world_size(self.num_nodes * self.num_processes, self.expert_parallel)
        super()._configure_launcher()

    def setup_environment(self) -> None:
        super().setup_environment()
        self.groups = build_groups(self.expert_parallel, self.root_device.type)

    # ---- gradients --------------------------------------------------------------------------

    def setup(self, trainer) -> None:
        module = self.model  # the LightningModule, before DDP wraps it
        self._expert_params = expert_parameters(module)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(self._expert_params))
        super().setup(trainer)

    def clip_grad_norm(self, optimizer, max_norm: float):
        """Clip by the norm over all expert shards (the LightningModule's configure_gradient_clipping
        calls this); returns that norm."""
        expert_ids = {id(p) for p in self._expert_params.values()}
        params = list(self.precision_plugin.main_params(optimizer))
        return clip_by_global_norm(params, expert_ids, float(max_norm), self.groups.ep.group)

    def optimizer_step(self, optimizer, closure, model=None, **kwargs: Any) -> Any:
        # Lightning clips and steps right after the closure's backward: reduce expert grads in between.
        def closure_then_reduce():
            result = closure()
            g = self.groups
            reduce_expert_grads(list(self._expert_params.values()), g.edp_group, g.edp_size, g.world_size)
            return result

        return super().optimizer_step(optimizer, closure_then_reduce, model, **kwargs)

    # ---- checkpoints ------------------------------------------------------------------------

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True  # loading needs this rank's experts and the optimizer built

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None
    ) -> None:
        save_sharded(
            checkpoint,
            filepath,
            self.lightning_module,
            self.optimizers,
            ep_rank=self.groups.ep.rank,
            expert_parallel=self.expert_parallel,
        )

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        if is_sharded(checkpoint_path):
            return load_sharded(Path(checkpoint_path), self.lightning_module, self.optimizers)
        # A single-process .ckpt (all experts in order): take this rank's rows.
        full = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        return localize_full(full, self.lightning_module, self.optimizers)


if "expert_parallel" not in StrategyRegistry:
    StrategyRegistry.register(
        "expert_parallel",
        ExpertParallelStrategy,
        description="DDP for dense parameters, experts split over parallel.expert_parallel ranks",
    )
