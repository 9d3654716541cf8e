"""Plugin registry: files load under unique module names, and a name taken twice is an error naming both."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from moelight.api import ConfigError, MoelightError
from moelight.registry import dispatchers, load_plugin_modules, routers

ROUTER_FILE = """
from moelight.api import routers
from moelight_plugins.routers.topk import TopKRouter


@routers.register({name!r})
class {cls}(TopKRouter):
    '''A renamed topk.'''
"""


@pytest.fixture()
def registries(monkeypatch):
    """Whatever a test registers is forgotten afterwards."""
    for registry in (routers, dispatchers):
        registry.names()  # discover the installed plugins before taking the copy
        monkeypatch.setattr(registry, "_classes", dict(registry._classes))
        monkeypatch.setattr(registry, "_conflicts", dict(registry._conflicts))


def write(path: Path, name: str, cls: str = "Renamed") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(ROUTER_FILE.format(name=name, cls=cls)))
    return path


def test_two_files_named_router_py_both_load(tmp_path, registries):
    a = write(tmp_path / "a" / "router.py", "kit_test_a")
    b = write(tmp_path / "b" / "router.py", "kit_test_b")
    load_plugin_modules([str(a), str(b)])
    assert routers.get("kit_test_a").__module__ != routers.get("kit_test_b").__module__
    load_plugin_modules([str(a)])  # the same file again is the same module: no collision


def test_a_plugin_reusing_a_bundled_name_is_an_error_naming_both(tmp_path, registries):
    clone = write(tmp_path / "my_topk.py", "topk", cls="TopKRouter")  # same qualified name too
    with pytest.raises(MoelightError) as err:
        load_plugin_modules([str(clone)])
    message = str(err.value)
    assert "two router plugins are named 'topk'" in message
    assert "moelight_plugins.routers.topk.TopKRouter" in message and str(clone.resolve()) in message
    with pytest.raises(ConfigError, match="two router plugins are named 'topk'"):
        routers.build({"name": "topk"}, None)


def test_two_user_files_taking_one_name(tmp_path, registries):
    a = write(tmp_path / "a" / "router.py", "kit_test_same")
    b = write(tmp_path / "b" / "router.py", "kit_test_same")
    with pytest.raises(MoelightError, match=r"named 'kit_test_same'.*a/router\.py.*b/router\.py"):
        load_plugin_modules([str(a), str(b)])
