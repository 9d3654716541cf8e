"""`moelight plugins`: a table of installed routers and dispatchers with their parameters."""

from __future__ import annotations

from typing import Literal, get_args, get_origin

from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.table import Table

from moelight.registry import Registry, _load_failures, dispatchers, routers


def type_name(annotation) -> str:
    if get_origin(annotation) is Literal:
        return "|".join(str(a) for a in get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def describe_params(cls) -> str:
    parts = []
    for name, field in cls.Params.model_fields.items():
        default = "required" if field.default is PydanticUndefined else repr(field.default)
        parts.append(f"{name}: {type_name(field.annotation)} = {default}")
    return "\n".join(parts) or "-"


def plugin_rows(registry: Registry) -> list[tuple[str, str, str, str]]:
    rows = []
    for name in registry.names():
        cls = registry.get(name)
        reason = cls.unavailable_reason() if hasattr(cls, "unavailable_reason") else None
        status = f"[red]unavailable[/]: {reason}" if reason else "[green]available[/]"
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cls.__module__
        rows.append((name, summary, describe_params(cls), status))
    return rows


def run(argv: list[str]) -> int:
    console = Console()
    for registry in (routers, dispatchers):
        table = Table(title=f"{registry.kind}s", show_lines=True)
        for col in ("name", "what it does", "parameters (name: type = default)", "status"):
            table.add_column(col)
        for row in plugin_rows(registry):
            table.add_row(*row)
        console.print(table)
    for name, error in _load_failures.items():
        console.print(f"[red]plugin entry point {name!r} failed to load[/]: {error}")
    return 0
