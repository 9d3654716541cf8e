"""jsonargparse errors as one line that names the argument and what it accepts."""

from __future__ import annotations

import re

MOELIGHT_OPTIONS = "--resume, --overwrite, --print-recipe, --config, --print_config, --help"


def parser_error_line(text: str) -> str:
    """One line out of a jsonargparse ArgumentError's (often multi-line) message (`moelight fit`)."""
    if text.startswith("unrecognized arguments:"):
        first = text.split(":", 1)[1].split()[0]
        name = first.split("=")[0]
        if "." in name:
            return f"{name.lstrip('-')}: unknown key (`moelight fit --help` lists recipe fields and Trainer arguments)"
        return f"unknown option {name!r} (options: {MOELIGHT_OPTIONS}; overrides look like --a.b value)"
    key = re.match(r'Parser key "([^"]+)"', text)
    if key is None:
        return " ".join(text.split())
    return value_error_line(key.group(1), text)


def value_error_line(name: str, text: str) -> str:
    """`name: invalid value 'x' (allowed: a, b)` out of jsonargparse's 'Parser key "..."' message."""
    given = re.search(r"(?:Given|Got) value: (.*)", text) or re.search(
        r"invalid literal for .*: '(.*)'", text
    )
    value = f" {given.group(1).strip()!r}" if given else ""
    if "dot import path" in text or "import path" in text and "class" in text.lower():
        hint = "expected a class name or dotted import path of a subclass, a list of them, or true/false"
        return f"{name}: cannot use{value}: {hint}"
    literals = re.findall(r"Literal\[([^\]]*)\]", text.split("Errors:")[0])
    allowed = ", ".join(v.strip().strip("'\"") for lit in literals for v in lit.split(","))
    if allowed:
        return f"{name}: invalid value{value} (allowed: {allowed})"
    # a restricted type (PositiveInt, ...), also inside Optional[...]: its reason, not NoneType's
    restricted = re.search(
        r"Not of type (\w+)(?:: (\S+ )?does not conform to restriction v([<>]=?)(\S+))?", text
    )
    if restricted:
        kind, bad, op, bound = restricted.groups()
        value = value or (f" {bad.strip()!r}" if bad else "")
        number = "an integer" if kind.endswith("Int") else "a number"
        return f"{name}: invalid value{value} (expected {number}{f' {op} {bound}' if op else ''})"
    expected = re.findall(r"Expected an? (?:<class '([^']+)'>|([^.\n]+))", text)
    names = dict.fromkeys((a or b).strip() for a, b in expected)
    reason = "expected " + " or ".join(names) if names else " ".join(text.split()[3:])
    return f"{name}: invalid value{value} ({reason})"
