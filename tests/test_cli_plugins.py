"""`moelight plugins NAME | FILE.py`: one plugin's parameters with types, bounds, defaults and descriptions."""

from __future__ import annotations

import pytest

from moelight.cli.main import main
from moelight.registry import dispatchers, routers

PLUGIN = '''
from pydantic import Field

from moelight.api import PluginParams, routers
from moelight_plugins.routers.topk import TopKRouter


@routers.register("kit_cli_router")
class Described(TopKRouter):
    """A router whose parameters say what they do."""

    class Params(PluginParams):
        temperature: float = Field(..., gt=0, description="divides the logits before the softmax")
        groups: int = Field(4, ge=1, le=64, description="expert groups to choose from")
'''


@pytest.fixture()
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps table cells at the terminal width


def flat(text: str) -> str:
    return " ".join(text.split())


def test_a_bundled_plugin_by_name(wide, capsys):
    assert main(["plugins", "topk"]) == 0
    out = flat(capsys.readouterr().out)
    assert "router topk: Top-k experts" in out and "plugins/routers/topk.py" in out
    assert "│ score │ softmax|sigmoid │ 'softmax' │ score function over the router logits │" in out
    assert "│ jitter │ float (>= 0, < 1) │ 0.0 │ training-only multiplicative input noise" in out


def test_a_plugin_file(wide, capsys, tmp_path, monkeypatch):
    routers.names()  # discovers the installed plugins first, so they are not only in the copy
    monkeypatch.setattr(routers, "_classes", dict(routers._classes))
    path = tmp_path / "router.py"
    path.write_text(PLUGIN)
    assert main(["plugins", str(path)]) == 0
    out = flat(capsys.readouterr().out)
    assert "router kit_cli_router: A router whose parameters say what they do." in out
    assert f"in a recipe: plugins: [{path}], router: {{name: kit_cli_router, temperature: ...}}" in out
    assert "│ temperature │ float (> 0) │ required │ divides the logits before the softmax │" in out
    assert "│ groups │ int (>= 1, <= 64) │ 4 │ expert groups to choose from │" in out


@pytest.mark.parametrize(
    "target,message",
    [("nope", "unknown plugin 'nope'; installed routers: balanced"), ("missing.py", "plugin file not found")],
)
def test_unknown_targets_exit_2(capsys, target, message):
    assert main(["plugins", target]) == 2
    assert message in flat(capsys.readouterr().err)


def test_every_installed_parameter_is_described():
    missing = [
        f"{registry.kind} {name}: {field}"
        for registry in (routers, dispatchers)
        for name in registry.names()
        for field, info in registry.get(name).Params.model_fields.items()
        if not info.description
    ]
    assert not missing, f"parameters without a Field description: {missing}"
