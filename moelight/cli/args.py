"""Splitting a verb's argv into a recipe path, its own flags and recipe overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

from moelight.errors import MoelightError


@dataclass
class VerbArgs:
    recipe: str | None = None
    flags: dict[str, str | bool] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)


def split_args(
    argv: list[str],
    value_flags: tuple[str, ...] = (),
    bool_flags: tuple[str, ...] = (),
    positional: bool = True,
) -> VerbArgs:
    """`[RECIPE] [--flag v] [a.b=v | --a.b v]...`: known flags are the verb's, dotted keys override the recipe."""
    out = VerbArgs()
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, _, inline = arg.partition("=")
        if name in value_flags:
            if inline:
                out.flags[name] = inline
            elif i + 1 < len(argv):
                out.flags[name] = argv[i + 1]
                i += 1
            else:
                raise MoelightError(f"{name} needs a value")
        elif name in bool_flags:
            out.flags[name] = True
        elif arg.startswith("--") and "." not in name:
            allowed = ", ".join(value_flags + bool_flags) or "none"
            raise MoelightError(
                f"unknown option {arg!r} (options: {allowed}; recipe overrides look like --a.b value)"
            )
        elif arg.startswith("--"):
            out.overrides.append(arg)
            if not inline and i + 1 < len(argv):
                out.overrides.append(argv[i + 1])
                i += 1
        elif "=" in arg:
            out.overrides.append(arg)
        elif positional and out.recipe is None:
            out.recipe = arg
        else:
            raise MoelightError(f"unexpected argument {arg!r}")
        i += 1
    return out
