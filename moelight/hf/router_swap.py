"""Exporting a model whose router Hugging Face cannot express: refuse, or swap it for top-k on request.

An HF MoE class routes each token to its top-k experts by the gate's softmax. A model trained with
another rule (C2R, device-limited, a selection bias...) would route differently there, so its
export is refused unless the user asks for `--router topk`: the gate weights are kept, the rule is
replaced, and config.json records what was dropped (`moelight_export`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moelight.errors import MoelightError
from moelight.registry import routers

# Router fields a plain top-k gate has: kept when the rest of the router is dropped.
TOPK_FIELDS = ("score", "renormalize", "aux_loss_coef", "z_loss_coef")
RECORD_KEY = "moelight_export"


def refuse_routing_change(name: str | None, arch: str, top_k: int) -> None:
    raise MoelightError(
        f"--arch {arch}: the model routes with the {name!r} router, which {arch} cannot express: the "
        f"export would route differently (each token to its plain softmax top-{top_k} experts); pass "
        "--router topk to export it anyway (config.json then records the router that was dropped)"
    )


def as_topk(router: dict[str, Any]) -> dict[str, Any]:
    """The top-k router section closest to `router` (its score function and weighting)."""
    if router.get("name") == "topk":
        return dict(router)
    _, params = routers.params(router, "router")
    values = params.model_dump()
    if values.get("gate_network", "linear") != "linear":
        raise MoelightError(
            f"--router topk: the {router.get('name')!r} router's {values['gate_network']} gate network cannot "
            "be kept by a top-k gate (a single linear layer); allowed: gate_network: linear"
        )
    if values.get("route_scale", 1.0) != 1.0:
        raise MoelightError(
            f"--router topk: a Hugging Face top-k gate has no weight scale, so route_scale "
            f"{values['route_scale']} would change the outputs; allowed: route_scale: 1.0"
        )
    if router.get("name") == "balanced" and values.get("method") == "noisy_cv":
        # Without noise (inference) the noisy gate weights the k best by a softmax over their logits.
        return {"name": "topk", "score": "softmax", "renormalize": True}
    return {"name": "topk"} | {k: values[k] for k in TOPK_FIELDS if k in values}


def record_dropped(out_dir: str | Path, original: dict[str, Any], exported: dict[str, Any]) -> str:
    """Write what `--router topk` replaced into config.json; returns the note for the user."""
    note = (
        f"exported with router {exported} instead of the trained {original.get('name')!r} router: "
        "the gate weights are kept, but this model routes each token to its top-k experts"
    )
    config_path = Path(out_dir) / "config.json"
    config = json.loads(config_path.read_text())
    config[RECORD_KEY] = {"router_dropped": original, "router_exported": exported, "note": note}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return note


EXPORTABLE_ROUTERS = ("topk",)


def topk_router_of(
    router: dict[str, Any], arch: str, top_k: int, *, renormalize_fixed: bool | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Check a router section can be expressed as HF's softmax top-k; return (params, warnings)."""
    name = router.get("name")
    if name not in EXPORTABLE_ROUTERS:
        refuse_routing_change(name, arch, top_k)
    _, params = routers.params(router, "router")
    values = params.model_dump()
    warnings: list[str] = []
    if values.get("score", "softmax") != "softmax":
        raise MoelightError(f"--arch {arch}: the router scores with {values['score']}; {arch} uses softmax")
    if values.get("route_scale", 1.0) != 1.0:
        raise MoelightError(
            f"--arch {arch}: the router multiplies its weights by route_scale {values['route_scale']}; "
            f"{arch} has no weight scale (allowed: route_scale: 1.0)"
        )
    if renormalize_fixed is not None and bool(values.get("renormalize", False)) != renormalize_fixed:
        raise MoelightError(
            f"--arch {arch}: {arch} always uses renormalize={renormalize_fixed} for the top-k weights, "
            f"the model's router has renormalize={values.get('renormalize')}"
        )
    values.setdefault("renormalize", False)
    values.setdefault("aux_loss_coef", 0.0)
    return values, warnings
