"""Collaboration profiling: run a trained model over a corpus and count how experts co-activate.

The artifact (`moelight profile CHECKPOINT --out DIR`) is a directory:

DIR/profile.safetensors — tensors, L = MoE layers (in model order), E = experts, k = top-k:
  coactivation       int64 [L, E, E]  tokens routed to both i and j (symmetric, zero diagonal)
  load               int64 [L, E]     tokens routed to each expert
  collaborators      int64 [L, E, E]  row i: the other experts by decreasing co-activation with i
                                      (ties: lower id first), i itself last — what the c2r router
                                      reads through `profile.path`
  concentration      float64 [L, E-1] column T-1: mean over experts of the share of an expert's
                                      co-activations held by its top-T collaborators
  specialization     float64 [L, E]   1 - normalised entropy of expert i's collaboration
                                      distribution p_ij = C_ij / sum_j C_ij: 0 = collaborates
                                      evenly with all E-1 others, 1 = with one only; NaN for an
                                      expert with no co-activation
  expert_sets        int64 [L, S, k]  every distinct set of experts a token was routed to
                                      (sorted ids; padded with -1 where a layer has fewer sets)
  expert_set_counts  int64 [L, S]     tokens per set (0 on padding): the exact routing histogram,
                                      from which the expected devices per token of any
                                      placement is computed exactly
DIR/profile.json — metadata and summary: format/version, the checkpoint, its recipe, the data
  and token count, shapes, the mean concentration curve, specialization, load CV, the LM loss
  over the profiled tokens, and per placement (`--devices N`) the kept co-activation share and
  expected devices per token, optimised vs contiguous.
DIR/placement-N.json — collaboration-aware placements (moelight/placement.py format).
DIR/coactivation.png, DIR/concentration.png — plots.

Counting is per token over every profiled token (the sum of per-batch
`coactivation_counts`), so it does not depend on the batch size; `max_tokens` cuts the last
batch at exactly that many tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from moelight.collaboration import (
    PROFILE_META,
    PROFILE_TENSORS,
    coactivation_counts,
    collaborators_from_counts,
    off_diagonal,
    read_profile_tensors,
)
from moelight.errors import MoelightError
from moelight.recipe import Recipe

FORMAT = "moelight-profile"
VERSION = 1


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


@dataclass
class LoadedModel:
    recipe: Recipe
    model: torch.nn.Module
    source: str


def _single_process_model(recipe: Recipe) -> torch.nn.Module:
    """All experts in this process, routed exactly as in training.

    Routers are built from the recipe's own contexts (its placement matters to
    `c2r` with `collaborators: placement`); experts and dispatch run locally (`sorted`).
    """
    from moelight.model.build import build_model, layer_contexts
    from moelight.registry import routers

    contexts = layer_contexts(recipe)
    if recipe.parallel.expert_parallel == 1:
        return build_model(recipe, contexts=contexts)
    local = recipe.model_copy(
        update={
            "parallel": recipe.parallel.model_copy(update={"expert_parallel": 1, "placement": "contiguous"}),
            "dispatcher": {"name": "sorted"},
        }
    )
    model = build_model(local)
    for layer, ctx in zip(model.moe_layers, contexts, strict=True):
        layer.router = routers.build(recipe.router, ctx, field="router")
    return model


def load_checkpoint(
    path: str | Path, overrides: list[str] | None = None, recipe_path: str | Path | None = None
) -> LoadedModel:
    """The model of a moelight checkpoint with its weights, and its recipe (plus `overrides`).

    Reading goes through `moelight.model.init_from.read_checkpoint` (single-file Lightning
    .ckpt, sharded expert-parallel directory, or a converted directory with its recipe.yaml).
    `recipe_path` replaces the recipe the checkpoint carries (needed for a bare .safetensors).
    """
    from moelight.model.init_from import read_checkpoint
    from moelight.recipe import merge, parse_overrides, read_recipe_dict, validate_recipe

    state, recipe_dict = read_checkpoint(path)
    if recipe_path is not None:
        recipe_dict = read_recipe_dict(recipe_path)
    if recipe_dict is None:
        raise MoelightError(
            f"{path} carries no recipe (a Lightning checkpoint's hyper_parameters['recipe'] or a "
            "converted directory's recipe.yaml): cannot tell which model to build (pass a recipe)"
        )
    recipe_dict = merge(recipe_dict, parse_overrides(overrides or []))
    model_section = dict(recipe_dict.get("model") or {})
    model_section["init_from"] = None  # the checkpoint's own weights are loaded below
    recipe = validate_recipe({**recipe_dict, "model": model_section})
    model = _single_process_model(recipe)
    own = model.state_dict()
    mismatched = [
        f"{k} {list(v.shape)} vs model {list(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise MoelightError(
            f"{path}: the weights do not fit the model of its recipe (shape mismatch: {mismatched[:3]})"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MoelightError(
            f"{path}: the weights do not fit the model of its recipe "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return LoadedModel(recipe, model, str(path))


# ---- the artifact -----------------------------------------------------------------------


def save_profile(profile: Profile, out_dir: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write DIR/profile.safetensors and DIR/profile.json; returns DIR."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(out / PROFILE_TENSORS),
        metadata={"format": FORMAT, "version": str(VERSION)},
    )
    info = {
        "format": FORMAT,
        "version": VERSION,
        "num_layers": profile.num_layers,
        "num_experts": profile.num_experts,
        "top_k": profile.top_k,
        "tokens": profile.tokens,
        "loss": profile.loss,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        **(meta or {}),
        "summary": profile.summary(),
    }
    _write_meta(out, info)
    return out


def _write_meta(out: Path, info: dict[str, Any]) -> None:
    (out / PROFILE_META).write_text(_dumps(_json_safe(info)) + "\n")


def _dumps(value: Any, indent: int = 0) -> str:
    """Indented JSON with lists of numbers on one line, so per-layer values read as rows."""
    pad = " " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k)}: {_dumps(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [f"{pad}{_dumps(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(value, allow_nan=False)


def _json_safe(value: Any) -> Any:
    """NaN (an expert or layer with no co-activation) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def read_profile(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of an artifact; `path` is its directory or its .safetensors file."""
    tensors = read_profile_tensors(path, field="profile")
    p = Path(path)
    meta_file = (p if p.is_dir() else p.parent) / PROFILE_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return tensors, meta


def histogram_from_tensors(tensors: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer (sets [S, k], counts [S]) lists from an artifact's padded tensors."""
    sets, counts = tensors["expert_sets"], tensors["expert_set_counts"]
    return list(sets.unbind(0)), list(counts.unbind(0))


# ---- placement ---------------------------------------------------------------------------

PLACEMENT_METHOD = "exact search or greedy + Kernighan-Lin (moelight/partition.py)"


def placement_file(out_dir: str | Path, num_devices: int) -> Path:
    return Path(out_dir) / f"placement-{num_devices}.json"


def write_placements(artifact: str | Path, devices: Sequence[int]) -> dict[str, dict[str, Any]]:
    """From an artifact's counts: DIR/placement-N.json for each N in `devices`, and their
    statistics (kept co-activation share, expected devices per token — optimised and
    contiguous) added to DIR/profile.json under "placements". Returns those statistics."""
    from moelight.partition import expected_devices_per_token, kept_share, optimize_placement
    from moelight.placement import contiguous_placement, save_placement

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
        _write_meta(out, meta)
    return stats
