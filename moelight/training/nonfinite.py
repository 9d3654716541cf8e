"""Stop (or skip) a step whose loss or gradients are not finite, and never save such weights.

Every optimizer step, after backward (gradients reduced across ranks) and before clipping and
the update, one fused norm over all gradients and the loss give a flag; ranks agree on it and
the host reads it once. With `trainer.on_nonfinite: skip` the step's gradients are dropped (the
optimizer then leaves every parameter alone) up to `max_nonfinite_skips` steps in a row; with
`stop`, or past that bound, training stops with `TrainingStopped` (exit status 3) naming the step
and what went non-finite. Checkpoints are written only after this check has passed, and a save
is refused outright if any weight or optimizer state is non-finite (e.g. a finite update that
overflowed), so the last healthy checkpoint and `last.ckpt` always stay.

Finite but huge optimizer values end the same way, as divergence at the step they break: a step
coefficient the weights' dtype cannot hold (AdamW raises on `lr / (1 - beta1^t)` beyond float32)
and an update that overflows the weights (a non-finite weight norm: checked after every update,
one fused norm and one host read, before a checkpoint or the next forward, which would blame a
router for what the optimizer did). No bound on lr at validation:
where it breaks depends on the dtype, the betas and the step, and any too-large lr ends here.
A skipped step is not an update: `step_skipped` and `updates_taken` let the module keep the router
hooks and the LR schedule on updates actually taken (Lightning's global_step counts every batch
stepped, skipped or not, as it does for torch.amp's skipped steps).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from torch.distributed.tensor import DTensor

from moelight.errors import TrainingStopped
from moelight.training.rank_agreement import any_rank

LOSS, GRADS = 0, 1
NOT_WRITTEN = "no checkpoint of this state was written (the last healthy one is kept)"
# torch's message when a Python scalar (e.g. AdamW's step size) does not fit the tensor's dtype
SCALAR_OVERFLOW = re.compile(r"cannot be converted to type .* without overflow")


def _grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]


def finite_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[n] bool: whether each tensor's norm is finite (one fused kernel, no host sync); a norm
    that overflows means values no forward pass survives either. A DTensor (FSDP) is checked on
    this rank's shard: callers combine the ranks' verdicts."""
    tensors = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    norms = torch._foreach_norm(tensors)
    return torch.isfinite(torch.stack([n.float() for n in norms]))


def nonfinite_flags(loss: torch.Tensor | None, grads: list[torch.Tensor]) -> torch.Tensor:
    """[loss not finite, some gradient not finite] as a float tensor, without a host sync."""
    device = grads[0].device if grads else (loss.device if loss is not None else "cpu")
    loss_bad = ~torch.isfinite(loss.detach().float()) if loss is not None else torch.tensor(False)
    grads_bad = ~finite_norms(grads).all() if grads else torch.tensor(False, device=device)
    return torch.stack([loss_bad.to(device), grads_bad]).float()


def nonfinite_tensors(named: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors whose norm is not finite (checked in one fused pass): inf/NaN values,
    or values so large that their norm overflows, which no forward pass survives either."""
    names = [n for n, t in named.items() if t.is_floating_point() and t.numel()]
    if not names:
        return []
    ok = finite_norms([named[n].detach() for n in names]).tolist()
    return [n for n, good in zip(names, ok) if not good]


def where(names: list[str], limit: int = 3) -> str:
    """`model.blocks.1.ffn.router.gate.weight` -> `layer 1 router`; the first few distinct places."""
    places: list[str] = []
    for name in names:
        parts = name.removeprefix("model.").split(".")
        if len(parts) > 3 and parts[0] == "blocks" and parts[2] == "ffn":
            place = f"layer {parts[1]} {parts[3]}"  # router, experts, shared_expert, ...
        elif len(parts) > 2 and parts[0] == "blocks":
            place = f"layer {parts[1]} {parts[2]}"
        else:
            place = parts[0]
        if place not in places:
            places.append(place)
    more = f" and {len(places) - limit} more" if len(places) > limit else ""
    return ", ".join(places[:limit]) + more


def first_nonfinite_routing(module: L.LightningModule) -> str | None:
    """The first MoE layer (in forward order) whose last routing holds non-finite values: where
    non-finite values entered, as later layers only inherit them."""
    model = getattr(module, "model", None)
    for layer in getattr(model, "moe_layers", []) or []:
        r = layer.last_routing
        if r is not None and not (torch.isfinite(r.weights).all() and torch.isfinite(r.logits).all()):
            return f"layer {layer.ctx.layer_index} router ({type(layer.router).__name__})"
    return None


class NonFiniteGuard(L.Callback):
    def __init__(self, policy: str = "stop", max_skips: int = 3):
        if policy not in ("stop", "skip"):
            raise ValueError(f"policy must be 'stop' or 'skip', got {policy!r}")
        self.policy = policy
        self.max_skips = max_skips
        self.skipped_in_a_row = 0
        self.skipped_total = 0
        self.skipped_last = False  # the last optimizer step was dropped
        self._updated = False  # an optimizer update ran since the last weights check
        self._loss: torch.Tensor | None = None

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = _grads(optimizer)
        loss_bad, grads_bad = any_rank(nonfinite_flags(self._loss, grads)).tolist()  # the one host sync
        self._loss = None
        self.skipped_last = False
        if not (loss_bad or grads_bad):
            self.skipped_in_a_row = 0
            self._updated = True
            return
        step = trainer.global_step + 1
        what = self._describe(pl_module, optimizer, bool(loss_bad), bool(grads_bad))
        if self.policy == "skip" and self.skipped_in_a_row < self.max_skips:
            self.skipped_in_a_row += 1
            self.skipped_total += 1
            self.skipped_last = True
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # optimizers leave parameters without gradients untouched
            if trainer.is_global_zero:
                print(
                    f"warning: step {step}: {what}; optimizer step skipped ({self.skipped_in_a_row} in a row)"
                )
            return
        bound = (
            f" ({self.skipped_in_a_row} steps in a row skipped, trainer.max_nonfinite_skips={self.max_skips})"
            if self.policy == "skip"
            else ""
        )
        advice = (
            # skipping is what ran out: more skips rarely help, a smaller step or a fixed router do
            "lower optim.lr, check the router, or resume from an earlier checkpoint"
            if self.policy == "skip"
            else "lower optim.lr, check the router, or set trainer.on_nonfinite=skip"
        )
        raise TrainingStopped(f"training diverged at step {step}: {what}{bound}; {NOT_WRITTEN}; {advice}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """After an update: are the weights still finite? (Before a checkpoint or the next forward.)"""
        if not self._updated:
            return
        self._updated = False
        params = [p.detach() for p in pl_module.parameters() if p.is_floating_point() and p.numel()]
        overflowed = ~finite_norms(params).all() if params else torch.tensor(False)
        if not any_rank(overflowed.float().reshape(1)).item():  # the one host read
            return
        bad = where(nonfinite_tensors(dict(pl_module.named_parameters()))) or "on another rank"
        raise TrainingStopped(
            f"training diverged at step {trainer.global_step}: the update overflowed the weights ({bad}); "
            f"{NOT_WRITTEN}; lower optim.lr or optim.weight_decay"
        )

    def _describe(self, pl_module, optimizer, loss_bad: bool, grads_bad: bool) -> str:
        parts = []
        if loss_bad:
            parts.append("the loss is not finite")
        if grads_bad:
            names = {id(p): n for n, p in pl_module.named_parameters()}
            bad = nonfinite_tensors(
                {
                    names.get(id(p), "?"): p.grad
                    for g in optimizer.param_groups
                    for p in g["params"]
                    if p.grad is not None
                }
            )
            parts.append(f"the gradient norm is not finite ({where(bad) or 'on another rank'})")
        routing = first_nonfinite_routing(pl_module)
        if routing:
            parts.append(f"first non-finite routing: {routing}")
        return "; ".join(parts)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse to write a checkpoint whose weights or optimizer state are not finite."""
        bad = nonfinite_tensors(dict(pl_module.state_dict()))
        states = [s for opt in trainer.optimizers for s in opt.state.values()]
        opt_bad = nonfinite_tensors(
            {
                f"optimizer state {i}.{k}": v
                for i, s in enumerate(states)
                for k, v in s.items()
                if torch.is_tensor(v)
            }
        )
        flags = any_rank(torch.tensor([float(bool(bad or opt_bad))], device=pl_module.device))
        if flags.item():
            places = where(bad) if bad else ("the optimizer state" if opt_bad else "on another rank")
            raise TrainingStopped(
                f"training diverged by step {trainer.global_step}: non-finite weights ({places}); "
                "this checkpoint was not written (the last healthy one is kept); lower optim.lr"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_total": self.skipped_total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_total = int(state_dict.get("skipped_total", 0))


def guard_of(trainer: L.Trainer | None) -> NonFiniteGuard | None:
    for cb in getattr(trainer, "callbacks", None) or []:
        if isinstance(cb, NonFiniteGuard):
            return cb
    return None


def step_skipped(trainer: L.Trainer | None) -> bool:
    """Whether the optimizer step just taken was dropped by `trainer.on_nonfinite: skip`."""
    guard = guard_of(trainer)
    return guard is not None and guard.skipped_last


def updates_taken(trainer: L.Trainer) -> int:
    """Optimizer updates actually applied so far: `global_step` less the skipped steps."""
    guard = guard_of(trainer)
    return trainer.global_step - (guard.skipped_total if guard is not None else 0)


@contextmanager
def update_overflow(trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """An optimizer step whose coefficients overflow the weights' dtype is divergence, not a crash."""
    try:
        yield
    except RuntimeError as err:
        if not SCALAR_OVERFLOW.search(str(err)):
            raise
        inner = getattr(optimizer, "optimizer", optimizer)  # under Lightning's LightningOptimizer
        group = inner.param_groups[0]
        dtype = str(group["params"][0].dtype).removeprefix("torch.")
        raise TrainingStopped(
            f"training diverged at step {trainer.global_step + 1}: the {type(inner).__name__} update "
            f"overflows {dtype} (lr {group['lr']:g}); {NOT_WRITTEN}; lower optim.lr"
        ) from None
