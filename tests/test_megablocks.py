"""The `megablocks` dispatcher where MegaBlocks cannot run: it loads, says why, and says how to install.

Numerical equality with `sorted` needs CUDA and MegaBlocks: tests/test_gpu.py.
"""

import pytest
import torch
from moelight_plugins.dispatchers.megablocks import MegaBlocksDispatcher, megablocks_expert_ids

from moelight.cli.main import main
from moelight.cli.plugins import plugin_rows
from moelight.errors import ConfigError
from moelight.recipe import load_recipe
from moelight.registry import _load_failures, dispatchers

INSTALL = "pip install --no-deps --no-build-isolation megablocks==0.10.0 stanford-stk==0.7.1"

unavailable = pytest.mark.skipif(
    MegaBlocksDispatcher.unavailable_reason() is None, reason="megablocks is installed and CUDA is here"
)


def flat(text: str) -> str:
    return " ".join(text.split())


def test_module_imports_and_registers_without_megablocks():
    assert "megablocks" in dispatchers.names()
    assert "megablocks" not in _load_failures
    assert dispatchers.get("megablocks") is MegaBlocksDispatcher
    assert set(MegaBlocksDispatcher.Params.model_fields) == {"mlp_impl"}


@unavailable
def test_choosing_it_is_a_config_error_with_an_install_hint():
    with pytest.raises(ConfigError) as err:
        load_recipe(None, ["dispatcher.name=megablocks"])
    assert err.value.field == "dispatcher.name"
    message = flat(str(err.value))
    assert "unavailable here" in message and INSTALL in message and "docs/megablocks.md" in message
    if not torch.cuda.is_available():
        assert "no CUDA device" in message


@unavailable
def test_fit_and_bench_exit_2_with_the_hint(capsys):
    assert main(["fit", "dispatcher.name=megablocks", "trainer.max_steps=1"]) == 2
    err = flat(capsys.readouterr().err)
    assert INSTALL in err and "Traceback" not in err
    assert main(["bench", "layer", "--preset", "cpu-tiny", "--dispatchers", "sorted,megablocks"]) == 2
    assert INSTALL in flat(capsys.readouterr().err)


@unavailable
def test_plugins_lists_it_as_unavailable_with_the_reason(capsys):
    row = next(r for r in plugin_rows(dispatchers) if r[0] == "megablocks")
    assert row[3].startswith("[red]unavailable[/]") and INSTALL in row[3]
    assert main(["plugins"]) == 0
    out = flat(capsys.readouterr().out)
    assert "megablocks" in out and "unavailable" in out


def test_expert_ids_follow_any_balanced_placement():
    placement = torch.tensor([1, 0, 1, 0, 0, 1])  # device 0 holds 1, 3, 4; device 1 holds 0, 2, 5
    ids = megablocks_expert_ids(placement, 2)
    # MegaBlocks' rank r owns ids [3r, 3r + 3): each device's experts, ascending, in its block.
    assert ids.tolist() == [3, 0, 4, 1, 2, 5]
    assert megablocks_expert_ids(torch.zeros(4, dtype=torch.long), 1).tolist() == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="experts on every device"):
        megablocks_expert_ids(torch.tensor([0, 0, 0, 1]), 2)
