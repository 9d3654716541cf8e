"""Route `moelight fit`'s argv: recipe file and overrides, moelight's own flags, Lightning's arguments.

- `RECIPE.yaml` (the first bare word) and `a.b=value` / `--a.b value` for recipe keys are recipe
  overrides (YAML scalars, validated by pydantic with the recipe);
- `--resume`, `--overwrite`, `--print-recipe`, `--force` are moelight's; `--help-trainer` is
  LightningCLI's `--help` (every Trainer argument; moelight's own `--help` is cli/fit_help.py);
- everything else (`--trainer.<any Trainer argument>`, `--config`, `--print_config`, `--help`) goes,
  in order, to LightningCLI's parser. `trainer.x=value` for a Trainer argument that is not a recipe
  field goes there too, as `--trainer.x=value`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import get_args

from moelight.errors import MoelightError
from moelight.recipe import Recipe, TrainerConfig
from moelight.training.trainer import ALIASES

VALUE_FLAGS = ("--resume",)
BOOL_FLAGS = ("--overwrite", "--print-recipe", "--force")
# Lightning-side options that never take the next word as their value.
NO_VALUE = ("-h", "--help", "--print_config")
LOGGER_KEYWORDS = get_args(TrainerConfig.model_fields["logger"].annotation)
STRATEGY_CLASS = "moelight.parallel.strategy.ExpertParallelStrategy"
# A class (not a name), so that `--trainer.strategy.expert_parallel P` can set its argument:
# jsonargparse gives a registered name no arguments, and a bare class name would stay a string.
STRATEGY_SPEC = json.dumps({"class_path": STRATEGY_CLASS})


@dataclass
class FitArgs:
    recipe: str | None = None
    resume: str | None = None
    overwrite: bool = False
    print_recipe: bool = False
    force: bool = False  # skip the memory check (trainer.skip_memory_check)
    overrides: list[str] = field(default_factory=list)  # `key=value` items for load_recipe
    lightning: list[str] = field(default_factory=list)  # argv for LightningCLI's parser


def recipe_key(key: str, value: str | None) -> str | None:
    """The recipe key a dotted CLI key sets, or None when it is Lightning's."""
    section, _, rest = key.partition(".")
    if section != "trainer":
        return key if section in Recipe.model_fields else None
    name = rest.split(".")[0]
    if name in ALIASES:
        return ".".join(ALIASES[name])
    if name == "logger":  # a keyword is the recipe's; a logger class is Lightning's
        return key if value in LOGGER_KEYWORDS else None
    return key if name in TrainerConfig.model_fields else None


def split_fit_args(argv: list[str]) -> FitArgs:
    out = FitArgs()
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        takes_next = not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        if name in VALUE_FLAGS:
            if not eq and i + 1 >= len(argv):
                raise MoelightError(f"{name} needs a value")
            out.resume = inline if eq else argv[i + 1]
            i += 1 if not eq else 0
        elif name == "--help-trainer":  # LightningCLI's full help (`--help` is fit_help.py's)
            out.lightning.append("--help")
        elif name in BOOL_FLAGS:
            setattr(out, name[2:].replace("-", "_"), True)
        elif arg.startswith("-"):
            value = inline if eq else (argv[i + 1] if takes_next and name not in NO_VALUE else None)
            consumed_next = value is not None and not eq
            key = recipe_key(name.lstrip("-"), value) if "." in name else None
            if key is not None:
                if value is None:
                    raise MoelightError(f"override {arg} needs a value")
                out.overrides.append(f"{key}={value}")
            elif value is None:
                out.lightning.append(arg)
            else:
                if name == "--trainer.strategy" and value == "expert_parallel":
                    arg, value = f"{name}={STRATEGY_SPEC}", STRATEGY_SPEC
                out.lightning += [arg] if eq else [name, value]
            i += 1 if consumed_next else 0
        elif eq:
            key = recipe_key(name, inline)
            if key is None and name.startswith("trainer."):
                out.lightning.append(f"--{arg}")
            else:
                out.overrides.append(f"{key or name}={inline}")
        elif out.recipe is None:
            out.recipe = arg
        else:
            raise MoelightError(
                f"unexpected argument {arg!r} (one recipe file; overrides look like a.b=value)"
            )
        i += 1
    return out
