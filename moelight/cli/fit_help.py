"""`moelight fit --help`: the recipe's fields by section, with types, this recipe's values and
descriptions, the chosen router's and dispatcher's own parameters included.

It reads the recipe (file and overrides) and never imports Lightning, so it is short and quick;
`moelight fit --help-trainer` prints LightningCLI's full list of Trainer arguments.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel

from moelight.recipe import Recipe, load_recipe
from moelight.registry import dispatchers, routers

USAGE = """usage: moelight fit [RECIPE.yaml] [a.b=value | --a.b value ...] [--resume last|PATH] [--overwrite]
                    [--print-recipe] [--force] [--config FILE] [--print_config] [--trainer.<Trainer argument> value ...]

Train the model a recipe describes. Without RECIPE, the embedded default (recipes/quickstart.yaml).
Values are YAML scalars (trainer.max_steps=50, --router.name c2r); the values below are this
recipe's, overrides included. Precedence, later wins: recipe file < --config files < the command
line (a.b=value, --a.b value, --trainer.* flags), whatever their order.

options:
  --resume last|PATH  continue the newest complete checkpoint in <trainer.out_dir>/checkpoints, or
                      a given one (model, router and optim must match its recipe)
  --overwrite         start afresh: an earlier run in trainer.out_dir moves to <out_dir>/replaced/<time>/
  --print-recipe      print the validated recipe and exit
  --force             start even when the memory plan says the model or batch cannot fit this
                      machine (as trainer.skip_memory_check: true)
  --config FILE       Lightning-CLI config (what --print_config prints); --print_config prints the run's
  --help-trainer      every Lightning Trainer argument (strategies, callbacks, loggers, profilers, ...)"""

# Recipe fields that are a Lightning Trainer argument under another name.
LIGHTNING_NAME = {
    ("trainer", "out_dir"): "default_root_dir",
    ("trainer", "progress_bar"): "enable_progress_bar",
    ("optim", "grad_clip"): "gradient_clip_val",
}
SECTIONS = ("model", "data", "optim", "trainer", "parallel", "profile")


def type_name(annotation: Any) -> str:
    """A readable type: `int`, `float|None`, `auto|csv|none`, `list[str]`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return "|".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def value_text(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return "null" if value is None else str(value)


def field_lines(prefix: str, model: BaseModel) -> list[str]:
    lines = []
    for name, field in type(model).model_fields.items():
        section = prefix.rstrip(".")
        note = field.description or ""
        if (section, name) in LIGHTNING_NAME:
            note = f"{note} [= --trainer.{LIGHTNING_NAME[section, name]}]".strip()
        head = f"  {prefix}{name}: {type_name(field.annotation)} = {value_text(getattr(model, name))}"
        lines.append(f"{head:<52} {note}".rstrip())
    return lines


def plugin_lines(section: str, spec: dict[str, Any]) -> list[str]:
    registry = routers if section == "router" else dispatchers
    _, params = registry.params(spec, section)
    head = f"  {section}.name: str = {spec['name']}"
    lines = [f"{head:<52} installed: {', '.join(registry.names())}"]
    return lines + field_lines(f"{section}.", params)


def help_text(recipe: Recipe, recipe_file: str | None) -> str:
    lines = [USAGE, ""]
    source = recipe_file or "the embedded default"
    for section in SECTIONS:
        lines.append(f"{section} ({source}):" if section == "model" else f"{section}:")
        lines += field_lines(f"{section}.", getattr(recipe, section))
        if section == "model":
            for plugin in ("router", "dispatcher"):
                lines.append(
                    f"{plugin} ({getattr(recipe, plugin)['name']}; `moelight plugins` lists each one's):"
                )
                lines += plugin_lines(plugin, getattr(recipe, plugin))
    lines.append("other:")
    lines.append(
        f"{'  seed: int = ' + str(recipe.seed):<52} seeds everything (there is no --seed_everything)"
    )
    lines.append(
        f"{'  plugins: list[str] = ' + str(recipe.plugins):<52} extra modules or .py files to import"
    )
    return "\n".join(lines)


def recipe_args(argv: list[str]) -> tuple[str | None, list[str]]:
    """The recipe file and the recipe overrides of a `moelight fit` command line (the rest is
    Lightning's and does not change the help). Like fit_args.split_fit_args, without Lightning."""
    recipe_file, overrides = None, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value, eq = argv[i + 1], "="
            i += 1
        section, _, field = name.partition(".")
        is_recipe = section in Recipe.model_fields and (
            section != "trainer"
            or field.split(".")[0] in Recipe.model_fields["trainer"].annotation.model_fields
        )
        if eq and is_recipe and name != "resume":
            overrides.append(f"{name}={value}")
        elif not arg.startswith("-") and not eq and recipe_file is None:
            recipe_file = arg
        i += 1
    return recipe_file, overrides


def run(argv: list[str]) -> int:
    recipe_file, overrides = recipe_args(argv)
    print(help_text(load_recipe(recipe_file, overrides), recipe_file))
    return 0
