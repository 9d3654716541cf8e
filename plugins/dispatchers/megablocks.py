"""`megablocks`: MegaBlocks' dropless MoE (`ParallelDroplessMLP`) driven by moelight's routing.

MegaBlocks does the permutation (its sort/histogram/gather/scatter kernels), the expert compute
(grouped GEMMs from the `grouped_gemm` package, or stk's block-sparse Triton kernels) and, with
`parallel.expert_parallel > 1`, its own all2all: one row per (token, expert), k rows per token.
moelight supplies the routing (experts and combine weights) and the expert weights: the layer's
canonical `w1, v1 [E, ffn, d]` and `w2 [E, d, ffn]` are handed to the kernels as they are.

MegaBlocks is an optional, CUDA-only dependency (docs/megablocks.md). This module imports it
lazily, so it loads (and `moelight plugins` lists it, as unavailable) on any machine.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from moelight.api import ConfigError, Dispatcher, MoelightError, PluginParams, Routing, dispatchers

INSTALL_HINT = (
    "MegaBlocks runs on CUDA only; on a GPU machine, after torch: `pip install --no-deps "
    "--no-build-isolation megablocks==0.10.0 stanford-stk==0.7.1 grouped_gemm==0.3.0` "
    "(see docs/megablocks.md)"
)


def _missing_modules() -> list[str]:
    return [m for m in ("megablocks", "stk") if importlib.util.find_spec(m) is None]


class _CanonicalGLU(nn.Module):
    """Stands in for MegaBlocks' `GroupedGLU`/`SparseGLU`, computing on moelight's weights.

    MegaBlocks calls `mlp(x, tokens_per_expert)` (grouped) or `mlp(x, topology)` (sparse) on rows
    already permuted by expert. The weights are held unregistered: the MoE layer owns them.
    """

    def __init__(self, experts: nn.Module, impl: str):
        super().__init__()
        object.__setattr__(self, "experts", experts)
        self.impl = impl

    def forward(self, x: torch.Tensor, meta: object) -> torch.Tensor:
        """`meta`: tokens per local expert (grouped) or the stk block-sparse topology (sparse)."""
        # Under bf16-mixed the master weights are fp32 and are cast per call; bf16-true copies nothing.
        w1, v1, w2 = self.experts.in_dtype(x.dtype)
        if self.impl == "grouped":
            from megablocks import grouped_gemm_util as gg

            batch_sizes = meta.cpu().to(torch.long)  # grouped_gemm wants host-side sizes
            # trans_b=True reads each [out, in] matrix as stored: w2 [E, d, ffn] needs no transpose.
            h = F.silu(gg.ops.gmm(x, w1, batch_sizes, trans_b=True))
            h = h * gg.ops.gmm(x, v1, batch_sizes, trans_b=True)
            return gg.ops.gmm(h, w2, batch_sizes, trans_b=True)
        import stk.ops
        from megablocks.layers.activation_fn import act_fn

        d = x.shape[-1]
        # stk's SDD reads w1/v1 as [E*ffn, d] (a free view); its DSD wants w2 as [E*ffn, d], which
        # moelight's [E, d, ffn] cannot be viewed as, so the sparse path copies w2 per call.
        h1 = stk.ops.sdd(x, w1.reshape(-1, d).t(), meta)
        h2 = stk.ops.sdd(x, v1.reshape(-1, d).t(), meta)
        h = stk.ops.mul(act_fn(h1, F.silu), h2)
        return stk.ops.dsd(h, w2.transpose(1, 2).reshape(-1, d))


def megablocks_expert_ids(placement: torch.Tensor, num_devices: int) -> torch.Tensor:
    """MegaBlocks' id for each global expert under moelight's placement.

    MegaBlocks gives rank r the experts [r*E/P, (r+1)*E/P). moelight's placement may be any
    balanced grouping, so relabel: expert g -> placement[g] * E/P + its slot on that device
    (experts of a device in ascending id order, as `build_model` creates them).
    """
    placement = placement.long()
    e = len(placement)
    per = e // num_devices
    mb_id = torch.empty(e, dtype=torch.long)
    for device in range(num_devices):
        group = (placement == device).nonzero().flatten()
        if len(group) != per or per * num_devices != e:
            raise ConfigError(
                "parallel.placement",
                f"megablocks needs E/P = {e / num_devices:g} experts on every device, device {device} has {len(group)}",
            )
        mb_id[group] = device * per + torch.arange(per)
    return mb_id


@dispatchers.register("megablocks")
class MegaBlocksDispatcher(Dispatcher):
    """MegaBlocks' dropless MoE on moelight's routing and expert weights (CUDA, bf16)."""

    fsdp_compatible = False  # MegaBlocks' layers hold parameters of their own; not tried under FSDP2

    class Params(PluginParams):
        mlp_impl: Literal["grouped", "sparse"] = Field(
            "grouped",
            description="grouped: grouped GEMMs (needs the grouped_gemm package); sparse: stk "
            "block-sparse Triton kernels (MegaBlocks refuses it with triton >= 3.2; ffn % 128 == 0)",
        )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        problems = []
        missing = _missing_modules()
        if missing:
            problems.append(
                f"the {' and '.join(missing)} package{'s are' if len(missing) > 1 else ' is'} not installed"
            )
        if not torch.cuda.is_available():
            problems.append("no CUDA device")
        if not problems:
            return None
        return f"{'; '.join(problems)}. {INSTALL_HINT}"

    def __init__(self, params, ctx, experts, ep=None):
        super().__init__(params, ctx, experts, ep)
        reason = self.unavailable_reason()
        if reason:
            raise ConfigError("dispatcher.name", f"dispatcher 'megablocks' is unavailable here: {reason}")
        if params.mlp_impl == "grouped" and importlib.util.find_spec("grouped_gemm") is None:
            raise ConfigError(
                "dispatcher.mlp_impl",
                "mlp_impl 'grouped' needs the grouped_gemm package: `pip install --no-deps "
                "--no-build-isolation grouped_gemm==0.3.0` (see docs/megablocks.md)",
            )
        if params.mlp_impl == "sparse" and ctx.expert_hidden_size % 128:
            raise ConfigError(
                "dispatcher.mlp_impl",
                f"mlp_impl 'sparse' needs model.expert_ffn_hidden_size divisible by 128 "
                f"(MegaBlocks' block size), got {ctx.expert_hidden_size}; use mlp_impl: grouped",
            )
        placement = ctx.placement.detach().cpu().long()
        mb_id = megablocks_expert_ids(placement, self.ep.size)
        mine = (placement == self.ep.rank).nonzero().flatten().tolist()
        if list(experts.global_ids) != mine:
            raise ConfigError(
                "parallel.placement",
                f"megablocks expects this rank's experts in ascending id order {mine}, got {experts.global_ids}",
            )
        self.register_buffer("mb_ids", mb_id.to(torch.int32), persistent=False)
        self.register_buffer("device_of", placement, persistent=False)
        object.__setattr__(self, "mb", self._build(params.mlp_impl))

    def _build(self, impl: str):
        from megablocks.layers.arguments import Arguments
        from megablocks.layers.dmoe import ParallelDroplessMLP

        ctx = self.ctx
        try:
            args = Arguments(
                hidden_size=ctx.hidden_size,
                ffn_hidden_size=ctx.expert_hidden_size,
                num_layers=1,
                bias=False,
                return_bias=False,
                activation_fn=F.silu,
                moe_num_experts=ctx.num_experts,
                moe_top_k=ctx.top_k,
                moe_loss_weight=0.0,  # moelight's router owns the auxiliary losses
                moe_expert_model_parallelism=self.ep.size > 1,
                expert_parallel_group=self.ep.group,
                mlp_type="glu",
                mlp_impl=impl,
                fp16=False,
                bf16=True,
                device=torch.device(
                    "meta"
                ),  # MegaBlocks' own expert weights: allocated nowhere, replaced below
            )
        except (ValueError, AssertionError) as exc:  # e.g. sparse with triton >= 3.2
            raise ConfigError("dispatcher.mlp_impl", f"MegaBlocks refused mlp_impl {impl!r}: {exc}") from None
        try:
            mb = ParallelDroplessMLP(args)
        except (ValueError, OverflowError) as exc:  # e.g. E * ffn < 128, MegaBlocks' block size
            raise ConfigError(
                "model.expert_ffn_hidden_size",
                f"MegaBlocks cannot build this layer ({ctx.num_experts} experts of ffn "
                f"{ctx.expert_hidden_size}; it needs num_experts * ffn >= 128): {exc}",
            ) from None
        mb.mlp = _CanonicalGLU(self.experts, impl)
        return mb

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        if torch.is_autocast_enabled("cuda"):
            x = x.to(torch.get_autocast_dtype("cuda"))
        if x.dtype != torch.bfloat16:
            raise MoelightError(
                f"dispatcher 'megablocks' computes in bfloat16 only (grouped_gemm), got {x.dtype}; "
                "use trainer.precision=bf16-mixed or bf16-true"
            )
        t, k = routing.experts.shape
        top = self.mb_ids[routing.experts]
        weights = routing.weights.to(x.dtype)  # MegaBlocks' scatter weighs rows in the data dtype
        y = self.mb(x.contiguous(), routing.logits, weights, top)
        self._count(routing.experts, t, k, x)
        return y

    @torch.no_grad()
    def _count(self, experts: torch.Tensor, t: int, k: int, x: torch.Tensor) -> None:
        self.stats.tokens += t
        self.stats.rows += t * k  # MegaBlocks sends every (token, expert) pair as its own row
        if self.ep.size == 1:
            self.stats.device_visits += t
            return
        devices = self.device_of[experts]
        remote = int((devices != self.ep.rank).sum())
        distinct = int((devices.sort(dim=1).values.diff(dim=1) != 0).sum()) + t
        self.stats.remote_rows += remote
        self.stats.bytes += 2 * remote * x.shape[1] * x.element_size()
        self.stats.device_visits += distinct
