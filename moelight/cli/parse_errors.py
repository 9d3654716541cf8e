"""jsonargparse errors as one line that names the argument and what it accepts."""

from __future__ import annotations

import re

MOELIGHT_OPTIONS = "--resume, --overwrite, --print-recipe, --config, --print_config, --help"


def missing_package_line(text: str) -> str | None:
    """`X needs the package P: pip install P` when a class named on the command line (a logger,
    a profiler, ...) cannot be used because an optional package is missing; else None."""
    text = " ".join(text.split())
    need = re.search(r"Requirement '([^']+)' not met", text)
    module = re.search(r"No module named '([\w.]+)'", text)
    if need is None and module is None:
        return None
    package = need.group(1) if need else module.group(1).split(".")[0]
    pip = re.search(r"`(pip install [^`]+)`", text)
    command = pip.group(1) if pip else f"pip install '{package}'"
    cls = re.search(r"class_path '([\w.]+)'", text)
    what = cls.group(1).rsplit(".", 1)[-1] if cls else "this option"
    return f"{what} needs the package {package}, which is not installed: {command}"


def parser_error_line(text: str) -> str:
    """One line out of a jsonargparse ArgumentError's (often multi-line) message (`moelight fit`)."""
    missing = missing_package_line(text)
    if missing:
        return missing
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
