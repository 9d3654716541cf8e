"""`moelight plugins`: a table of installed routers and dispatchers with their parameters."""

from __future__ import annotations

from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.table import Table

from moelight.registry import Registry, _load_failures, dispatchers, routers


def describe_params(cls) -> str:
    parts = []
    for name, field in cls.Params.model_fields.items():
        default = "required" if field.default is PydanticUndefined else repr(field.default)
        annotation = getattr(field.annotation, "__name__", None) or str(field.annotation).replace(
            "typing.", ""
        )
        parts.append(f"{name}: {annotation} = {default}")
    return "\n".join(parts) or "-"


def plugin_rows(registry: Registry) -> list[tuple[str, str, str, str]]:
    rows = []
    for name in registry.names():
        cls = registry.get(name)
        reason = cls.unavailable_reason() if hasattr(cls, "unavailable_reason") else None
        status = f"[red]unavailable[/]: {reason}" if reason else "[green]available[/]"
        rows.append((name, f"{cls.__module__}", describe_params(cls), status))
    return rows


def run(argv: list[str]) -> int:
    console = Console()
    for registry in (routers, dispatchers):
        table = Table(title=f"{registry.kind}s", show_lines=True)
        for col in ("name", "module", "parameters (name: type = default)", "status"):
            table.add_column(col)
        for row in plugin_rows(registry):
            table.add_row(*row)
        console.print(table)
    for name, error in _load_failures.items():
        console.print(f"[red]plugin entry point {name!r} failed to load[/]: {error}")
    return 0
