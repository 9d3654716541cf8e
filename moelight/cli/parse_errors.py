"""jsonargparse and Lightning errors as one line that names the argument and what it accepts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies import StrategyRegistry

from moelight.errors import MoelightError

MOELIGHT_OPTIONS = "--resume, --overwrite, --print-recipe, --config, --print_config, --help"


def parser_error_line(text: str) -> str:
    """One line out of a jsonargparse ArgumentError's (often multi-line) message."""
    if text.startswith("unrecognized arguments:"):
        first = text.split(":", 1)[1].split()[0]
        name = first.split("=")[0]
        if "." in name:
            return f"{name.lstrip('-')}: unknown key (`moelight fit --help` lists recipe fields and Trainer arguments)"
        return f"unknown option {name!r} (options: {MOELIGHT_OPTIONS}; overrides look like --a.b value)"
    key = re.match(r'Parser key "([^"]+)"', text)
    if key is None:
        return " ".join(text.split())
    given = re.search(r"(?:Given|Got) value: (.*)", text)
    value = f" {given.group(1).strip()!r}" if given else ""
    if "dot import path" in text or "import path" in text and "class" in text.lower():
        hint = "expected a class name or dotted import path of a subclass, a list of them, or true/false"
        return f"{key.group(1)}: cannot use{value}: {hint}"
    literals = re.findall(r"Literal\[([^\]]*)\]", text.split("Errors:")[0])
    allowed = ", ".join(v.strip().strip("'\"") for lit in literals for v in lit.split(","))
    if allowed:
        return f"{key.group(1)}: invalid value{value} (allowed: {allowed})"
    expected = re.findall(r"Expected an? (?:<class '([^']+)'>|([^.\n]+))", text)
    names = dict.fromkeys((a or b).strip() for a, b in expected)
    reason = "expected " + " or ".join(names) if names else " ".join(text.split()[3:])
    return f"{key.group(1)}: invalid value{value} ({reason})"


@contextmanager
def trainer_errors() -> Iterator[None]:
    """Errors Lightning raises for bad Trainer arguments (precision, accelerator, devices,
    strategy names, missing logger packages) become one-line user errors."""
    try:
        yield
    except MoelightError:
        raise
    except (MisconfigurationException, ValueError, TypeError, ImportError) as exc:
        message = " ".join(str(exc).split())
        if "invalid strategy name" in message:
            name = re.search(r"strategy=(\S+?)`", message)
            names = ", ".join(StrategyRegistry.available_strategies())
            message = (
                f"unknown strategy {name.group(1) if name else ''} (registered: {names}; or a Strategy class)"
            )
        raise MoelightError(f"trainer: {message}") from None
