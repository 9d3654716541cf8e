"""`moelight plugins [NAME | FILE.py ...]`: the installed routers and dispatchers, or one plugin's parameters.

Without arguments: a table of every installed plugin. With a plugin name, or a `.py` plugin file
(imported as a recipe's `plugins:` entry would be), each plugin's source, status and parameters:
name, type with its bounds, default and description (the `Field(description=...)` of its Params).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from moelight.cli.verb_parser import VerbParser
from moelight.errors import MoelightError
from moelight.registry import (
    Registry,
    _load_failures,
    dispatchers,
    file_module_name,
    load_plugin_modules,
    routers,
    source_of,
)

REGISTRIES = (routers, dispatchers)
BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def type_name(annotation) -> str:
    if get_origin(annotation) is Literal:
        return "|".join(str(a) for a in get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def bounds(field: FieldInfo) -> str:
    """`>= 0, < 1` from the field's annotated-types constraints."""
    parts = []
    for constraint in field.metadata:
        for attr, symbol in BOUNDS.items():
            value = getattr(constraint, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def default_text(field: FieldInfo) -> str:
    return "required" if field.default is PydanticUndefined else repr(field.default)


def describe_params(cls) -> str:
    parts = []
    for name, field in cls.Params.model_fields.items():
        parts.append(f"{name}: {type_name(field.annotation)} = {default_text(field)}")
    return "\n".join(parts) or "-"


def status_of(cls) -> str:
    reason = cls.unavailable_reason() if hasattr(cls, "unavailable_reason") else None
    return f"[red]unavailable[/]: {escape(reason)}" if reason else "[green]available[/]"


def summary_of(cls) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cls.__module__


def plugin_rows(registry: Registry) -> list[tuple[str, str, str, str]]:
    rows = []
    for name in registry.names():
        cls = registry.get(name)
        rows.append((name, summary_of(cls), describe_params(cls), status_of(cls)))
    return rows


def params_table(cls) -> Table:
    table = Table(show_lines=True)
    for col in ("parameter", "type", "default", "description"):
        table.add_column(col)
    for name, field in cls.Params.model_fields.items():
        kind = type_name(field.annotation)
        if bounds(field):
            kind += f" ({bounds(field)})"
        table.add_row(name, escape(kind), escape(default_text(field)), escape(field.description or ""))
    return table


def show_plugin(console: Console, registry: Registry, name: str, file: str | None = None) -> None:
    cls = registry.get(name)
    console.print(f"[bold]{registry.kind} {name}[/]: {escape(summary_of(cls))}")
    console.print(f"source: {escape(source_of(cls))}", highlight=False)
    console.print(f"status: {status_of(cls)}")
    required = [n for n, f in cls.Params.model_fields.items() if f.default is PydanticUndefined]
    recipe = ", ".join([f"name: {name}", *(f"{n}: ..." for n in required)])
    plugins = f"plugins: [{file}], " if file else ""
    console.print(f"in a recipe: {escape(plugins)}{registry.kind}: {{{escape(recipe)}}}", highlight=False)
    if cls.Params.model_fields:
        console.print(params_table(cls))
    else:
        console.print("parameters: none")


def plugins_named(target: str) -> list[tuple[Registry, str]]:
    """(registry, name) of each plugin `target` names: a plugin name, or every plugin a `.py` file registers."""
    if target.endswith(".py"):
        if not Path(target).is_file():
            raise MoelightError(f"plugin file not found: {target}")
        load_plugin_modules([target])
        module = file_module_name(Path(target))
        found = [(r, n) for r in REGISTRIES for n in r.names() if r.get(n).__module__ == module]
        if not found:
            raise MoelightError(f"{target} registers no router or dispatcher (use @routers.register(NAME))")
        return found
    found = [(r, target) for r in REGISTRIES if target in r.names()]
    if not found:
        installed = "; ".join(f"{r.kind}s: {', '.join(r.names())}" for r in REGISTRIES)
        raise MoelightError(f"unknown plugin {target!r}; installed {installed} (or give a .py file)")
    return found


def show_all(console: Console) -> None:
    for registry in REGISTRIES:
        table = Table(title=f"{registry.kind}s", show_lines=True)
        for col in ("name", "what it does", "parameters (name: type = default)", "status"):
            table.add_column(col)
        for row in plugin_rows(registry):
            table.add_row(*row)
        console.print(table)
    console.print("`moelight plugins NAME` shows one plugin's parameters with their descriptions.")


def parser() -> VerbParser:
    p = VerbParser(
        "moelight plugins",
        "Without arguments: every installed router and dispatcher, with its parameters and status.",
    )
    p.add_argument(
        "targets",
        nargs="*",
        default=[],
        metavar="NAME | FILE.py",
        help="a plugin name (e.g. topk) or a plugin file (as a recipe's `plugins:` would load it): "
        "each plugin's parameters with types, bounds, defaults and descriptions",
    )
    return p


def run(argv: list[str]) -> int:
    args = parser().parse(argv)
    if args is None:
        return 0
    console = Console()
    if not args.targets:
        show_all(console)
    for target in args.targets:
        for registry, name in plugins_named(target):
            show_plugin(console, registry, name, target if target.endswith(".py") else None)
    for name, error in _load_failures.items():
        console.print(f"[red]plugin entry point {name!r} failed to load[/]: {escape(error)}")
    return 0
