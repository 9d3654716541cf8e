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


def topk_router_problems(
    router: dict[str, Any], arch: str, top_k: int, *, renormalize_fixed: bool | None = None
) -> list[str]:
    """Why `router` is not HF's softmax top-k gate for `arch`, each with the recipe change that fixes it."""
    name = router.get("name")
    if name not in EXPORTABLE_ROUTERS:
        return [
            f"the {name!r} router, which {arch} cannot express: the export would route differently (each "
            f"token to its plain softmax top-{top_k} experts) (fix: router.name=topk and train, or pass "
            "--router topk to export it anyway; config.json then records the router that was dropped)"
        ]
    values = routers.params(router, "router")[1].model_dump()
    problems = []
    if values.get("score", "softmax") != "softmax":
        problems.append(
            f"router.score: {values['score']} ({arch} scores with softmax; fix: router.score=softmax)"
        )
    if values.get("route_scale", 1.0) != 1.0:
        problems.append(
            f"router.route_scale: {values['route_scale']} ({arch} has no weight scale; fix: router.route_scale=1.0)"
        )
    if renormalize_fixed is not None and bool(values.get("renormalize", False)) != renormalize_fixed:
        problems.append(
            f"router.renormalize: {str(values.get('renormalize', False)).lower()} ({arch} always uses "
            f"renormalize={str(renormalize_fixed).lower()} for the top-k weights; fix: "
            f"router.renormalize={str(renormalize_fixed).lower()})"
        )
    return problems


def topk_router_of(
    router: dict[str, Any], arch: str, top_k: int, *, renormalize_fixed: bool | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Check a router section can be expressed as HF's softmax top-k; return (params, warnings)."""
    problems = topk_router_problems(router, arch, top_k, renormalize_fixed=renormalize_fixed)
    if problems:
        raise MoelightError(f"--arch {arch}: the model cannot be exported as {arch}: {'; '.join(problems)}")
    values = routers.params(router, "router")[1].model_dump()
    values.setdefault("renormalize", False)
    values.setdefault("aux_loss_coef", 0.0)
    return values, []
