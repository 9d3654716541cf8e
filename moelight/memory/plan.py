"""The memory plan: per-rank bytes of a recipe's training step, by arithmetic alone.

Nothing is allocated (a 10^12-token vocabulary is planned in microseconds), so the same plan
serves `moelight bench memory` and the check `moelight fit` runs before building a model. The
activation terms follow what autograd saves in moelight's transformer (see transformer.py,
moe_layer.py and the `sorted` dispatcher); they are checked against measured peaks on CPU
(tests/test_memory_plan.py, docs/benchmarks.md) and on a GPU (benchmarks/gpu_check.sh).

The sharding options model the strategies that run them:
- DDP (`fsdp=False`): every rank holds the dense parameters and its E/P experts, their
  gradients, AdamW's two moments, and (N > 1) DDP's gradient buckets for the dense part.
- FSDP2 (`fsdp=True`): dense parameters sharded over all N ranks, each rank's experts over the
  N/P ranks holding the same experts; the blocks being computed are gathered (this one and the
  prefetched next, in the compute dtype) and a block's unsharded gradient exists until its
  reduce-scatter. With `bf16-mixed` the sharded parameters, gradients and moments are fp32.
- Offload: `optimizer` moves AdamW's moments to host memory, `params` also the sharded
  parameters and gradients (FSDP2's CPUOffloadPolicy); the plan reports the host bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from moelight.recipe import Recipe

Offload = Literal["none", "optimizer", "params"]
GIB = 1024**3


@dataclass(frozen=True)
class Setup:
    """How a step runs: ranks, sharding, precision, micro-batch, checkpointing."""

    devices: int = 1  # N: ranks in the job (trainer.devices x trainer.num_nodes)
    expert_parallel: int = 1  # P
    micro_batch: int = 1
    seq_len: int = 2048
    checkpointing: str = "none"
    precision: str = "32-true"
    fsdp: bool = False
    offload: Offload = "none"
    loss_chunk_tokens: int = 1024
    device: Literal["cuda", "cpu"] = "cuda"  # AdamW is foreach on CUDA (one moment-sized temporary)

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len

    @property
    def mixed(self) -> bool:
        """Autocast: fp32 parameters and residual stream, bf16/fp16 matmuls."""
        return self.precision.endswith("-mixed") and not self.precision.startswith("32")

    @property
    def compute_bytes(self) -> int:
        return 2 if self.precision.startswith(("bf16", "16")) else 4

    @property
    def param_bytes(self) -> int:
        """Bytes of a stored parameter, gradient and AdamW moment (fp32 master under -mixed)."""
        return 2 if self.precision in ("bf16-true", "16-true") else 4


def setup_from_recipe(recipe: Recipe, **changes) -> Setup:
    """The Setup a recipe describes; `changes` (e.g. devices=4) override it. `parallel.fsdp`,
    `parallel.param_dtype: bfloat16` (bf16 compute over fp32 master state, planned as
    `bf16-mixed`) and `parallel.cpu_offload` (parameters, gradients, optimizer state on the host,
    planned as offload `params`) are read from the recipe."""
    t, par = recipe.trainer, recipe.parallel
    devices = t.devices if isinstance(t.devices, int) and t.devices > 0 else 1
    precision = str(t.precision)
    if getattr(par, "param_dtype", "float32") == "bfloat16" and not precision.startswith("bf16"):
        precision = "bf16-mixed"
    values = {
        "devices": devices * t.num_nodes,
        "expert_parallel": par.expert_parallel,
        "micro_batch": recipe.data.batch_size,
        "seq_len": recipe.data.seq_len,
        "checkpointing": t.activation_checkpointing,
        "precision": precision,
        "fsdp": bool(getattr(par, "fsdp", False)),
        "offload": "params" if getattr(par, "cpu_offload", False) else "none",
        "loss_chunk_tokens": t.loss_chunk_tokens,
    }
    values.update({k: v for k, v in changes.items() if v is not None})
    return Setup(**values)


@dataclass(frozen=True)
class ParameterCounts:
    """Elements per part of the model (global, not per rank)."""

    embed: int
    head: int  # 0 when tied to the embedding
    final_norm: int
    attention: int  # per layer, norms included
    dense_ffn: int  # per dense layer, its norm included
    moe_dense: int  # per MoE layer: norm, router, shared expert (+ gate)
    per_expert: int
    dense_layers: int
    moe_layers: int
    num_experts: int

    @property
    def experts(self) -> int:
        return self.per_expert * self.num_experts * self.moe_layers

    @property
    def dense(self) -> int:
        layers = self.attention * (self.dense_layers + self.moe_layers)
        return (
            self.embed
            + self.head
            + self.final_norm
            + layers
            + self.dense_ffn * self.dense_layers
            + self.moe_dense * self.moe_layers
        )

    @property
    def total(self) -> int:
        return self.dense + self.experts


def router_parameters(recipe: Recipe) -> int:
    """Parameters of one MoE layer's router: the gate (d x E; LLaMA-MoE's mlp gate adds E x E)
    and a learned noise projection (d x E) when the router has one."""
    cfg, params = recipe.model, recipe.router
    d, e = cfg.hidden_size, cfg.num_experts
    gate = d * e + (e * e if params.get("gate_network") == "mlp" else 0)
    noisy = params.get("noise") is True or (
        params.get("name") == "balanced" and params.get("method") == "noisy_cv"
    )
    return gate + (d * e if noisy else 0)


def count_parameters(recipe: Recipe) -> ParameterCounts:
    cfg = recipe.model
    d, heads = cfg.hidden_size, cfg.n_heads
    kv = cfg.n_kv_heads or heads
    hd = cfg.head_dim or d // heads
    q, k = heads * hd, kv * hd
    attention = d * q + 2 * d * k + q * d + 2 * d  # q, k, v, o and the two block norms
    if cfg.qkv_bias:
        attention += q + 2 * k
    if cfg.qk_norm:
        attention += q + k
    shared = 3 * d * cfg.shared_expert_ffn_hidden_size
    if cfg.shared_expert_ffn_hidden_size and cfg.shared_expert_gate:
        shared += d
    n_moe = len(cfg.moe_layers)
    return ParameterCounts(
        embed=cfg.vocab_size * d,
        head=0 if cfg.tie_embeddings else cfg.vocab_size * d,
        final_norm=d,
        attention=attention,
        dense_ffn=3 * d * cfg.ffn_hidden_size,
        moe_dense=router_parameters(recipe) + shared,
        per_expert=3 * d * cfg.expert_ffn_hidden_size,
        dense_layers=cfg.n_layers - n_moe,
        moe_layers=n_moe,
        num_experts=cfg.num_experts,
    )


@dataclass(frozen=True)
class LayerActivations:
    """Bytes one block keeps for backward (`kept`, under the checkpointing mode), holds while its
    backward runs (`full`: recomputed when checkpointed) and its backward's temporaries."""

    kept: int
    full: int
    backward_temp: int


def block_activations(recipe: Recipe, s: Setup, moe: bool) -> LayerActivations:
    cfg = recipe.model
    T, d = s.tokens, cfg.hidden_size
    heads = cfg.n_heads
    kv = cfg.n_kv_heads or heads
    hd = cfg.head_dim or d // heads
    q, kvw = heads * hd, kv * hd
    r = 2 if s.precision in ("bf16-true", "16-true") else 4  # the residual stream's dtype
    c = s.compute_bytes
    casts = s.mixed  # under autocast every matmul saves its own cast of its input
    norm = 4 * T * d + 4 * T + (4 * T * d if r == 2 else 0)  # fp32 product and rsqrt (+ upcast)
    residual = r * T * d
    # attention: input + norm, q/k/v inputs, rotated q and k, v, SDPA out + logsumexp, o_proj input
    kv_saved = q if kvw != q else kvw  # grouped-query k/v are repeated to every head
    attn = (
        residual + norm + c * T * d * (3 if casts else 1) + c * T * (q + 2 * kv_saved + 2 * q) + 4 * T * heads
    )
    if cfg.qk_norm:
        attn += (c + 4) * T * (q + kvw)
    ffn_in = residual + norm  # the FFN's input (saved by its norm) and the norm
    if moe:
        k, f, e = cfg.top_k, cfg.expert_ffn_hidden_size, cfg.num_experts
        rows = T * k
        sf = cfg.shared_expert_ffn_hidden_size
        uses = 1 + (3 if sf and cfg.shared_expert_gate else 2 if sf else 0)
        ffn = ffn_in + c * T * d * (uses if casts else 1)
        ffn += 8 * T * e + 24 * rows  # router logits and probabilities; sort indices (int64)
        ffn += r * rows * d + (2 * c * rows * d if casts else 0)  # gathered rows (+ casts for w1, v1)
        ffn += 4 * c * rows * f  # per row: w1 and v1 outputs, silu, product
        ffn += 4 * rows * d + (c * rows * d if casts else 0)  # expert outputs in fp32 for the combine
        if sf:
            ffn += 4 * c * T * sf + (c * T * d if cfg.shared_expert_gate else 0)
        widest = max(rows * f, T * sf)
    else:
        fd = cfg.ffn_hidden_size
        ffn = ffn_in + c * T * d * (2 if casts else 1) + 4 * c * T * fd
        widest = T * fd
    full = attn + ffn
    # backward: the residual gradient in and out, the widest intermediate's gradient
    backward_temp = 2 * 4 * T * d + c * widest
    mode = s.checkpointing
    if mode == "full":
        kept = residual
    elif mode == "attention":
        kept = residual + ffn
    elif mode == "moe" and moe:
        kept = attn + residual
    else:
        kept = full
    return LayerActivations(kept=kept, full=full, backward_temp=backward_temp)


@dataclass
class MemoryPlan:
    """Per-rank bytes on the device (and on the host for offload)."""

    setup: Setup
    counts: ParameterCounts
    params: int
    grads: int
    optimizer: int
    activations: int  # kept for backward by all blocks at the end of the forward
    logits: int  # the loss head's peak (one chunk's logits and their gradient, or the whole)
    transient: int  # gathered FSDP blocks, autocast weight copies, DDP buckets, optimizer temporaries
    peak: int
    peak_phase: str
    host: int  # host memory per rank for offloaded state
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, int]]:
        return [
            ("parameters", self.params),
            ("gradients", self.grads),
            ("optimizer state", self.optimizer),
            ("activations", self.activations),
            ("logits / loss", self.logits),
            ("transient", self.transient),
            ("peak", self.peak),
            ("host (offload)", self.host),
        ]


def _saved_params(s: Setup, moe: bool, layer_params: int, attention: int) -> int:
    """Parameters of a block that its non-checkpointed parts save for backward."""
    if s.checkpointing == "full":
        return 0
    if s.checkpointing == "moe" and moe:
        return attention
    if s.checkpointing == "attention":
        return layer_params - attention
    return layer_params


def _head_bytes(recipe: Recipe, s: Setup) -> tuple[int, int, int]:
    """(kept by the head after forward, its forward peak on top, its backward peak on top)."""
    T, d, v = s.tokens, recipe.model.hidden_size, recipe.model.vocab_size
    r = 2 if s.precision in ("bf16-true", "16-true") else 4
    c = s.compute_bytes
    extra = c if c != 4 else 0  # the matmul's own output before the fp32 upcast
    kept = 2 * r * T * d + 4 * T * d + 4 * T  # final norm input, output and product
    chunk = s.loss_chunk_tokens
    if chunk <= 0 or chunk >= T:  # one piece: log-softmax output kept; logits, then its gradient
        return kept + 4 * T * v, (extra + 4) * T * v, (extra + 4) * T * v
    # a chunk's logits and log-softmax in forward; in backward recomputed, plus their gradients
    return kept, (extra + 8) * chunk * v, (2 * extra + 12) * chunk * v


def plan(recipe: Recipe, s: Setup) -> MemoryPlan:
    counts = count_parameters(recipe)
    n, p = s.devices, s.expert_parallel
    notes: list[str] = []
    ps, c = s.param_bytes, s.compute_bytes
    experts_local = counts.experts // p  # this rank's experts (all of its EP slice)
    if s.fsdp:
        stored = counts.dense / n + experts_local / max(1, n // p)
    else:
        stored = counts.dense + experts_local
    stored = int(stored)
    params = ps * stored
    grads = ps * stored
    moment = 4 if ps == 4 else 2
    optimizer = 2 * moment * stored
    host = 0
    if s.offload != "none":
        if not s.fsdp:
            notes.append("offload is modelled for FSDP2 (CPUOffloadPolicy); planned as if sharded")
        host += optimizer
        optimizer = 0
        if s.offload == "params":
            host += params + grads
            params = grads = 0

    # per-layer figures
    moe_set = set(recipe.model.moe_layers)
    kinds = {moe: block_activations(recipe, s, moe) for moe in (False, True)}
    acts = [kinds[i in moe_set] for i in range(recipe.model.n_layers)]
    layer_params = [
        counts.attention
        + (
            counts.moe_dense + experts_local // max(1, counts.moe_layers)
            if i in moe_set
            else counts.dense_ffn
        )
        for i in range(recipe.model.n_layers)
    ]
    head_kept, head_fwd, head_bwd = _head_bytes(recipe, s)
    root = counts.embed + counts.head + counts.final_norm

    transient_fixed = 0  # held through forward and backward
    persistent = 0  # held always (DDP's buckets)
    weight_copy = [0] * len(acts)
    if s.fsdp:
        widest = max(layer_params, default=0)
        gathered = 2 * c * widest + c * root  # this block + the prefetched next; the root unit
        transient_fixed += gathered
        # a block's unsharded gradient and the reduce-scatter's input: on CUDA two blocks are in
        # flight; on CPU (gloo) FSDP2 keeps them until backward ends (measured: docs/benchmarks.md)
        layer_grad = [8 * widest if s.device == "cuda" else 0] * len(layer_params)
        grad_shard = [
            ps * (lp - (experts_local // max(1, counts.moe_layers) if i in moe_set else 0)) / n
            + (ps * experts_local // max(1, counts.moe_layers) / max(1, n // p) if i in moe_set else 0)
            for i, lp in enumerate(layer_params)
        ]
        grad_shard = [int(g) for g in grad_shard]
        if s.device == "cpu":
            grad_shard = [g + 8 * lp for g, lp in zip(grad_shard, layer_params, strict=True)]
        head_grad = 4 * (counts.embed + counts.head)  # unsharded before its reduce-scatter
        head_grad_kept = ps * (counts.embed + counts.head) // n
    else:
        if s.mixed:  # autocast's bf16 copy of each weight lives from its use to its backward
            weight_copy = [c * lp for lp in layer_params]
        if n > 1:
            # DDP's gradient buckets: the dense part (experts sync outside DDP when P > 1)
            persistent += ps * (counts.dense + (experts_local if p == 1 else 0))
        layer_grad = [0] * len(acts)
        grad_shard = [ps * lp for lp in layer_params]
        head_grad = head_grad_kept = ps * (counts.head or counts.embed)
    if s.offload == "params":
        grad_shard = [0] * len(acts)
        head_grad_kept = 0
    if s.fsdp and s.device == "cpu":
        # measured on CPU (gloo): a block's gathered parameters that autograd saved stay until
        # that block's backward, unless the block is checkpointed
        weight_copy = [
            c * _saved_params(s, i in moe_set, lp, counts.attention) for i, lp in enumerate(layer_params)
        ]
    kept = [a.kept + w for a, w in zip(acts, weight_copy, strict=True)]
    kept_total = sum(kept) + head_kept
    head_copy = c * (counts.head or counts.embed) if (s.mixed and not s.fsdp) else 0

    phases: dict[str, int] = {
        "forward (loss head)": transient_fixed + kept_total + head_copy + head_fwd,
        "backward (loss head)": transient_fixed + kept_total + head_copy + head_bwd + head_grad,
    }
    # backward walks the blocks top-down: the blocks below keep their activations, this one holds
    # all of its own (recomputed when checkpointed), and the gradients above are done
    below = sum(kept)
    grads_so_far = head_grad_kept
    walk_phase, walk_peak = "backward", 0
    for i in range(len(acts) - 1, -1, -1):
        below -= kept[i]
        grads_so_far += grad_shard[i]
        live = below + acts[i].full + weight_copy[i] + acts[i].backward_temp + grads_so_far + layer_grad[i]
        if live > walk_peak:
            walk_phase, walk_peak = f"backward (block {i})", live
    phases[walk_phase] = transient_fixed + walk_peak
    # AdamW: foreach on CUDA makes one moment-sized temporary; the CPU loop one tensor's worth
    opt_temp = moment * (stored if s.device == "cuda" else max(counts.embed, counts.per_expert))
    if s.offload != "none":
        opt_temp = 0
    phases["optimizer step"] = grads + opt_temp
    phase, top = max(phases.items(), key=lambda kv: kv[1])
    peak = params + optimizer + persistent + top
    return MemoryPlan(
        setup=s,
        counts=counts,
        params=params,
        grads=grads,
        optimizer=optimizer,
        activations=kept_total,
        logits=max(head_fwd, head_bwd),
        transient=persistent + (opt_temp if phase == "optimizer step" else transient_fixed),
        peak=peak,
        peak_phase=phase,
        host=host,
        notes=notes,
    )
