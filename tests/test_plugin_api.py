"""Plugins, bundled and in examples/, import moelight only through `moelight.api`, and the API exports what it lists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import moelight.api as api

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_FILES = sorted((ROOT / "plugins").rglob("*.py")) + sorted((ROOT / "examples").glob("*.py"))


def moelight_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "moelight" or n.startswith("moelight.")}


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(path):
    assert moelight_imports(path) <= {"moelight.api"}, f"{path.name} imports {moelight_imports(path)}"


def test_api_exports_what_it_lists():
    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert not missing and len(set(api.__all__)) == len(api.__all__)
