"""Collaboration profiling: run a trained model over a corpus and count how experts co-activate.

The artifact (`moelight profile CHECKPOINT --out DIR`) is a directory; its format, reader and
writer are `moelight/c2r/profile_file.py`. DIR/placement-N.json (moelight/c2r/placement.py format)
and the plots DIR/coactivation.png, DIR/concentration.png are written beside it.

Counting is per token over every profiled token (the sum of per-batch
`coactivation_counts`), so it does not depend on the batch size; `max_tokens` cuts the last
batch at exactly that many tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from moelight.c2r.collaboration import coactivation_counts, collaborators_from_counts, off_diagonal
from moelight.c2r.partition import expected_devices_per_token, kept_share, optimize_placement
from moelight.c2r.placement import contiguous_placement, save_placement
from moelight.c2r.profile_file import (
    PROFILE_TENSORS,
    histogram_from_tensors,
    read_profile,
    write_profile,
    write_profile_meta,
)
from moelight.errors import MoelightError

# ---- counting ---------------------------------------------------------------------------


@dataclass
class Profile:
    """Counts accumulated over profiled tokens (see the module docstring for each field)."""

    num_layers: int
    num_experts: int
    top_k: int
    coactivation: torch.Tensor = field(init=False)
    load: torch.Tensor = field(init=False)
    tokens: int = 0
    loss_sum: float = 0.0
    loss_tokens: int = 0
    # Per layer: expert set (sorted tuple of ids) -> tokens routed to exactly that set.
    set_histogram: list[dict[tuple[int, ...], int]] = field(init=False)

    def __post_init__(self) -> None:
        self.coactivation = torch.zeros(self.num_layers, self.num_experts, self.num_experts, dtype=torch.long)
        self.load = torch.zeros(self.num_layers, self.num_experts, dtype=torch.long)
        self.set_histogram = [{} for _ in range(self.num_layers)]

    def add(self, layer: int, experts: torch.Tensor) -> None:
        """Count one batch of routings `experts: [T, k]` of MoE layer `layer` (its index in model order)."""
        experts = experts.detach().cpu().long()
        e = self.num_experts
        self.coactivation[layer] += coactivation_counts(experts, e)
        self.load[layer] += torch.bincount(experts.reshape(-1), minlength=e)
        sets, counts = torch.unique(experts.sort(dim=1).values, dim=0, return_counts=True)
        hist = self.set_histogram[layer]
        for s, n in zip(map(tuple, sets.tolist()), counts.tolist(), strict=True):
            hist[s] = hist.get(s, 0) + n

    # ---- derived ---------------------------------------------------------------------

    @property
    def collaborators(self) -> torch.Tensor:
        return collaborators_from_counts(self.coactivation)

    @property
    def loss(self) -> float | None:
        return self.loss_sum / self.loss_tokens if self.loss_tokens else None

    def expert_sets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The routing histogram as padded tensors: sets [L, S, k] (-1 padding), counts [L, S]."""
        return histogram_tensors(self.set_histogram, self.top_k)

    def summary(self) -> dict[str, Any]:
        return summary_metrics(self.coactivation, self.load)


def histogram_tensors(
    hists: Sequence[dict[tuple[int, ...], int]], width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    size = max([len(h) for h in hists] + [1])
    sets = torch.full((len(hists), size, width), -1, dtype=torch.long)
    counts = torch.zeros(len(hists), size, dtype=torch.long)
    for layer, hist in enumerate(hists):
        for row, (s, n) in enumerate(sorted(hist.items())):
            sets[layer, row, : len(s)] = torch.tensor(s, dtype=torch.long)
            counts[layer, row] = n
    return sets, counts


def concentration_curve(counts: torch.Tensor) -> torch.Tensor:
    """[..., E-1]: entry T-1 is the mean over experts (with any co-activation) of the share of
    their co-activations held by their top-T collaborators; `collaboration.concentration` per T."""
    c = off_diagonal(counts)
    e = c.shape[-1]
    # Off-diagonal counts, largest first; the diagonal zero sorts last and is dropped.
    top = c.sort(dim=-1, descending=True).values[..., : e - 1].cumsum(-1)
    total = c.sum(-1, keepdim=True)
    active = (total > 0).to(torch.float64)
    share = torch.where(total > 0, top / total.clamp(min=1e-300), torch.zeros_like(top))
    n = active.sum(-2).clamp(min=1)
    return (share * active).sum(-2) / n


def specialization(counts: torch.Tensor) -> torch.Tensor:
    """[..., E]: 1 - normalised entropy of each expert's collaboration distribution (NaN if none)."""
    c = off_diagonal(counts)
    e = c.shape[-1]
    total = c.sum(-1, keepdim=True)
    p = c / total.clamp(min=1e-300)
    entropy = -(p * torch.log(p.clamp(min=1e-300))).sum(-1)
    norm = entropy / math.log(e - 1) if e > 2 else torch.zeros_like(entropy)
    return torch.where(total.squeeze(-1) > 0, 1.0 - norm, torch.full_like(norm, float("nan")))


def load_cv(load: torch.Tensor) -> torch.Tensor:
    """Per layer: coefficient of variation (std / mean) of the tokens per expert."""
    x = torch.as_tensor(load).to(torch.float64)
    return x.std(-1, unbiased=False) / x.mean(-1).clamp(min=1e-300)


def summary_metrics(coactivation: torch.Tensor, load: torch.Tensor) -> dict[str, Any]:
    curve = concentration_curve(coactivation)  # [L, E-1]
    spec = specialization(coactivation)  # [L, E]
    cv = load_cv(load)
    return {
        "concentration": curve.mean(0).tolist(),
        "concentration_per_layer": curve.tolist(),
        "specialization": float(spec.nanmean()),
        "specialization_per_layer": spec.nanmean(-1).tolist(),
        "load_cv": float(cv.mean()),
        "load_cv_per_layer": cv.tolist(),
    }


@torch.no_grad()
def profile_model(
    model: torch.nn.Module,
    batches: Iterable[Any],
    max_tokens: int | None = None,
) -> Profile:
    """Run `model` (a MoETransformer) over `batches` and count its routings.

    A batch is token ids [B, S] or a pair (inputs, targets); with targets the mean LM loss over
    the counted tokens is recorded too (targets of -100 are skipped).
    """
    layers = model.moe_layers
    if not layers:
        raise MoelightError("the model has no MoE layers: nothing to profile")
    ctx = layers[0].ctx
    profile = Profile(len(layers), ctx.num_experts, ctx.top_k)
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            if max_tokens is not None and profile.tokens >= max_tokens:
                break
            x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
            logits = model(x)
            n = x.numel()
            if max_tokens is not None:
                n = min(n, max_tokens - profile.tokens)  # routing is per token: cut exactly
            for j, layer in enumerate(layers):
                if layer.last_routing is None:
                    raise MoelightError(f"MoE layer {layer.ctx.layer_index} recorded no routing")
                profile.add(j, layer.last_routing.experts[:n])
            if y is not None:
                target = y.reshape(-1)[:n]
                keep = target != -100
                loss = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1])[:n][keep], target[keep], reduction="sum"
                )
                profile.loss_sum += float(loss)
                profile.loss_tokens += int(keep.sum())
            profile.tokens += n
    finally:
        model.train(was_training)
    return profile


# ---- checkpoints ------------------------------------------------------------------------


def save_profile(profile: Profile, out_dir: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write DIR/profile.safetensors and DIR/profile.json; returns DIR."""
    sets, set_counts = profile.expert_sets()
    tensors = {
        "coactivation": profile.coactivation,
        "load": profile.load,
        "collaborators": profile.collaborators,
        "concentration": concentration_curve(profile.coactivation),
        "specialization": specialization(profile.coactivation),
        "expert_sets": sets,
        "expert_set_counts": set_counts,
    }
    info = {
        "num_layers": profile.num_layers,
        "num_experts": profile.num_experts,
        "top_k": profile.top_k,
        "tokens": profile.tokens,
        "loss": profile.loss,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        **(meta or {}),
        "summary": profile.summary(),
    }
    return write_profile(out_dir, tensors, info)


# ---- placement ---------------------------------------------------------------------------

PLACEMENT_METHOD = "exact search or greedy + Kernighan-Lin (moelight/c2r/partition.py)"


def placement_file(out_dir: str | Path, num_devices: int) -> Path:
    return Path(out_dir) / f"placement-{num_devices}.json"


def write_placements(artifact: str | Path, devices: Sequence[int]) -> dict[str, dict[str, Any]]:
    """From an artifact's counts: DIR/placement-N.json for each N in `devices`, and their
    statistics (kept co-activation share, expected devices per token — optimised and
    contiguous) added to DIR/profile.json under "placements". Returns those statistics."""
    tensors, meta = read_profile(artifact)
    out = Path(artifact) if Path(artifact).is_dir() else Path(artifact).parent
    counts = tensors["coactivation"]
    num_layers, num_experts = counts.shape[0], counts.shape[-1]
    sets, set_counts = histogram_from_tensors(tensors)
    stats = dict(meta.get("placements", {}))
    for p in devices:
        if p < 1 or num_experts % p:
            raise MoelightError(
                f"--devices {p}: {num_experts} experts cannot be split into {p} equal device groups"
            )
    for p in devices:
        optimised = optimize_placement(counts, p)
        contiguous = contiguous_placement(num_layers, num_experts, p)
        kept, kept0 = kept_share(counts, optimised), kept_share(counts, contiguous)
        dev, dev0 = (expected_devices_per_token(sets, set_counts, pl) for pl in (optimised, contiguous))
        entry = {
            "file": placement_file(out, p).name,
            "method": PLACEMENT_METHOD,
            "kept_share": float(kept.mean()),
            "contiguous_kept_share": float(kept0.mean()),
            "devices_per_token": float(dev.mean()),
            "contiguous_devices_per_token": float(dev0.mean()),
            "kept_share_per_layer": kept.tolist(),
            "contiguous_kept_share_per_layer": kept0.tolist(),
            "devices_per_token_per_layer": dev.tolist(),
            "contiguous_devices_per_token_per_layer": dev0.tolist(),
        }
        save_placement(
            placement_file(out, p),
            optimised,
            method=PLACEMENT_METHOD,
            profile=PROFILE_TENSORS,
            kept_share=entry["kept_share"],
            devices_per_token=entry["devices_per_token"],
            contiguous_devices_per_token=entry["contiguous_devices_per_token"],
        )
        stats[str(p)] = entry
    if meta:
        meta["placements"] = stats
        write_profile_meta(out, meta)
    return stats
