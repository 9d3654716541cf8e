"""A router plugin file a test writes and trains with, registered into a copy of the registry."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

from moelight.api import routers
from moelight.registry import discover, file_module_name


def write_probe(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write `source` as tmp_path/probe.py (for a recipe's `plugins:`); the test's registrations
    go into a copy of the registry that monkeypatch puts back afterwards."""
    discover()  # first, or the installed plugins would land in the copy and vanish with it
    monkeypatch.setattr(routers, "_classes", dict(routers._classes))
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    return probe


def probe_module(probe: Path) -> ModuleType:
    """The module the run imported from `probe`, to read what it recorded."""
    return sys.modules[file_module_name(probe)]
