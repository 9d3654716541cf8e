"""Naming benchmark candidates: `name[:key=value...]` for dispatchers, plus the reference ones.

`grouplocal:kernels=torch:rows=per_expert` is the `grouplocal` dispatcher with those params; the
whole string is the candidate's label in tables and JSON. Values are parsed as YAML scalars.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from moelight.bench.reference import REFERENCE_CANDIDATES
from moelight.errors import MoelightError
from moelight.registry import dispatchers, routers


@dataclass(frozen=True)
class Candidate:
    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> dict[str, Any]:
        """The recipe-style `{name: ..., <params>}` mapping."""
        return {"name": self.name, **self.params}


def parse_spec(text: str, what: str = "candidate") -> Candidate:
    name, *parts = text.strip().split(":")
    params: dict[str, Any] = {}
    for part in parts:
        key, sep, raw = part.partition("=")
        if not sep or not key:
            raise MoelightError(f"cannot read {what} {text!r}: parameters look like name:key=value:key=value")
        params[key] = yaml.safe_load(raw) if raw else ""
    return Candidate(text.strip(), name, params)


def split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_candidates(text: str, allowed_extra: tuple[str, ...] = REFERENCE_CANDIDATES) -> list[Candidate]:
    """Comma-separated candidates; unknown names are an error listing the allowed ones."""
    out = [parse_spec(t) for t in split_list(text)]
    if not out:
        raise MoelightError("--dispatchers needs at least one candidate")
    allowed = dispatchers.names() + list(allowed_extra)
    for c in out:
        if c.name not in allowed:
            raise MoelightError(f"unknown dispatcher {c.name!r}; allowed: {', '.join(allowed)}")
        if c.name in allowed_extra and c.params:
            raise MoelightError(f"{c.name!r} takes no parameters (got {c.label!r})")
        if c.name not in allowed_extra:
            dispatchers.params(c.spec, "dispatcher")  # unavailable plugins and bad params fail here
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise MoelightError(f"a candidate is named twice: {', '.join(labels)}")
    return out


def parse_router(text: str) -> Candidate:
    router = parse_spec(text, "router")
    if router.name not in routers.names():
        raise MoelightError(f"unknown router {router.name!r}; allowed: {', '.join(routers.names())}")
    routers.params(router.spec, "router")
    return router


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MoelightError("--device cuda: no CUDA device on this machine (use --device cpu)")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise MoelightError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def resolve_baseline(candidates: list[Candidate], baseline: str | None) -> tuple[list[str], str]:
    """The candidates' labels and the baseline among them (the first when none is given)."""
    labels = [c.label for c in candidates]
    baseline = baseline or labels[0]
    if baseline not in labels:
        raise ValueError(f"baseline {baseline!r} is not among the candidates {labels}")
    return labels, baseline
