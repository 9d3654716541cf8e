"""`moelight bench step`: a full training step (forward, backward, clipping, AdamW step) per dispatcher.

Each candidate gets its own model built from the same recipe and seed (so identical initial
weights), differing only in `dispatcher`. Batches are random token ids of the recipe's
`data.batch_size x data.seq_len`: this times the model and optimizer, not the data pipeline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from moelight.bench.candidates import Candidate, resolve_baseline, resolve_device
from moelight.bench.reference import GEMM_ONLY, HF_LOOP, HFLoopDispatcher
from moelight.bench.timing import interleaved, paired_results
from moelight.errors import MoelightError
from moelight.model.build import build_model
from moelight.model.transformer import MoETransformer
from moelight.recipe import Recipe
from moelight.training.optim import build_optimizer


def _precision(recipe: Recipe, device: torch.device) -> tuple[torch.dtype | None, torch.dtype | None]:
    """(parameter dtype, autocast dtype) for the recipe's Lightning precision string."""
    p = recipe.trainer.precision
    if p in ("bf16-true", "bf16"):
        return torch.bfloat16, None
    if p in ("16-true",):
        return torch.float16, None
    if p == "bf16-mixed":
        return None, torch.bfloat16
    if p in ("16-mixed", "16"):
        return None, torch.float16
    if p in ("32-true", "32", "64-true"):
        return None, None
    raise MoelightError(f"trainer.precision {p!r} is not supported by `moelight bench step`")


def build_candidate_model(recipe: Recipe, cand: Candidate, device: torch.device) -> MoETransformer:
    if cand.name == GEMM_ONLY:
        raise MoelightError("'gemm-only' times expert GEMMs alone: use it with `moelight bench layer`")
    spec = {"name": "sorted"} if cand.name == HF_LOOP else cand.spec
    if recipe.parallel.expert_parallel != 1:
        raise MoelightError("`moelight bench step` runs one process: set parallel.expert_parallel=1")
    torch.manual_seed(recipe.seed)  # the same initial weights for every candidate
    model = build_model(recipe.model_copy(update={"dispatcher": spec}))
    if cand.name == HF_LOOP:
        for layer in model.moe_layers:
            layer.dispatcher = HFLoopDispatcher(layer.ctx, layer.experts)
    return model.to(device)


def bench_step(
    recipe: Recipe,
    candidates: list[Candidate],
    baseline: str | None = None,
    *,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "auto",
) -> dict[str, Any]:
    dev = resolve_device(device)
    labels, baseline = resolve_baseline(candidates, baseline)
    param_dtype, autocast_dtype = _precision(recipe, dev)
    b, s = recipe.data.batch_size, recipe.data.seq_len
    gen = torch.Generator().manual_seed(recipe.seed)
    tokens = torch.randint(0, recipe.model.vocab_size, (b, s + 1), generator=gen).to(dev)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    clip = recipe.optim.grad_clip

    fns: dict[str, Callable[[], object]] = {}
    optimizers = {}
    for cand in candidates:
        model = build_candidate_model(recipe, cand, dev)
        if param_dtype is not None:
            model = model.to(param_dtype)
        opt = build_optimizer(model, recipe.optim, recipe.trainer.max_steps)
        optimizers[cand.label] = opt["optimizer"]

        def step(model=model, optimizer=opt["optimizer"], scheduler=opt["lr_scheduler"]["scheduler"]):
            ctx = (
                torch.autocast(dev.type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with ctx:
                logits = model(inputs)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
                loss = loss + model.aux_loss().to(loss.device)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            scheduler.step()

        fns[cand.label] = step

    def clear(label: str) -> None:
        optimizers[label].zero_grad(set_to_none=True)

    times = interleaved(fns, repeats=repeats, warmup=warmup, device=dev, before=clear)
    results = paired_results(times, labels, baseline, b * s)
    return {
        "kind": "step",
        "model": recipe.model.model_dump(mode="json"),
        "router": recipe.router,
        "batch_size": b,
        "seq_len": s,
        "precision": recipe.trainer.precision,
        "baseline": baseline,
        "repeats": repeats,
        "warmup": warmup,
        "device": str(dev),
        "results": results,
    }
