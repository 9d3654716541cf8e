"""Every file in examples/ is what CONTRIBUTING.md shows, loads as a recipe's plugin, and passes
`check_router` / `check_dispatcher`; the example router against a reference written here;
and a short training run with both examples reaches the router hooks."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
from probe_plugin import probe_module, write_probe

from moelight.api import LayerContext, dispatchers, routers
from moelight.cli.main import main
from moelight.registry import file_module_name, load_plugin_modules
from moelight.testing import check_dispatcher, check_router

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
LISTING = re.compile(r"```python\n(# (examples/\S+\.py)\n.*?)```", re.S)


def listings() -> dict[str, str]:
    """The complete files CONTRIBUTING.md shows: fenced blocks whose first line names the file."""
    return {path: code for code, path in LISTING.findall((ROOT / "CONTRIBUTING.md").read_text())}


def registered_by(path: Path) -> list[tuple[object, str]]:
    load_plugin_modules([str(path)])
    module = file_module_name(path)
    return [(r, n) for r in (routers, dispatchers) for n in r.names() if r.get(n).__module__ == module]


def test_contributing_shows_every_example_in_full():
    assert sorted(listings()) == [f"examples/{p.name}" for p in EXAMPLES]
    for name, code in listings().items():
        assert code == (ROOT / name).read_text(), f"CONTRIBUTING.md's listing of {name} differs from the file"


def test_contributing_walkthroughs_end_in_passing_checks(monkeypatch):
    """The `check_router` / `check_dispatcher` snippets CONTRIBUTING.md ends each walkthrough with, run as shown."""
    snippets = [
        code
        for code in re.findall(r"```python\n(.*?)```", (ROOT / "CONTRIBUTING.md").read_text(), re.S)
        if "moelight.testing import" in code
    ]
    assert [("check_router" in c, "check_dispatcher" in c) for c in snippets] == [
        (True, False),
        (False, True),
    ]
    monkeypatch.chdir(ROOT)  # the snippets name the examples relative to the repository
    for code in snippets:
        exec(compile(code, "CONTRIBUTING.md", "exec"), {})


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_plugins_pass_the_kit_checks(path):
    plugins = registered_by(path)
    assert plugins, f"{path.name} registers no plugin"
    for registry, name in plugins:
        if registry is routers:
            check_router(name)
        else:
            check_dispatcher(name)


def test_sinkhorn_router_balances_a_skewed_gate_in_training_only():
    load_plugin_modules([str(ROOT / "examples" / "sinkhorn_router.py")])
    ctx = LayerContext(hidden_size=16, num_experts=8, top_k=2, layer_index=0)
    router = routers.build({"name": "sinkhorn", "iterations": 10}, ctx)
    with torch.no_grad():
        router.gate.weight[0] += 0.5  # with inputs shifted by +1, expert 0 wins almost every token
    x = torch.randn(512, 16) + 1.0
    plain = router.eval()(x)
    probs = torch.softmax(x @ router.gate.weight.T, -1)
    assert torch.equal(plain.experts, probs.topk(2, -1).indices)  # eval: plain top-k
    balanced = router.train()(x)
    load = torch.bincount(balanced.experts.flatten(), minlength=8).float()
    assert float(torch.bincount(plain.experts.flatten(), minlength=8).max()) > 400
    assert float(load.max() / load.mean()) < 1.5
    logged = router.pop_logged()
    assert float(logged["max_load_over_mean"]) == pytest.approx(float(load.max() / load.mean()))
    torch.testing.assert_close(balanced.weights, probs.gather(1, balanced.experts))  # not the balanced scores


HOOKS = """
from moelight_plugins.routers.topk import TopKRouter

from moelight.api import routers

CALLS = []


@routers.register("kit_hook_probe")
class HookProbe(TopKRouter):
    def begin_step(self, step):
        super().begin_step(step)
        CALLS.append(("begin", self.ctx.layer_index, step))

    def after_optimizer_step(self):
        CALLS.append(("after", self.ctx.layer_index, self.step))

    def forward(self, x):
        if self.training:
            self.log_scalar("step_seen", self.step)
        return super().forward(x)
"""


def read_metrics(run_dir: Path) -> list[dict]:
    return [row for p in run_dir.glob("logs/version_*/metrics.csv") for row in csv.DictReader(p.open())]


@pytest.mark.slow
def test_training_calls_the_router_hooks_and_logs_router_scalars(tiny, tmp_path, monkeypatch):
    probe = write_probe(HOOKS, tmp_path, monkeypatch)
    steps = ["trainer.max_steps=3", "trainer.log_every_n_steps=1", "model.n_layers=1"]
    assert main(["fit", *tiny, *steps, f"plugins=[{probe}]", "router.name=kit_hook_probe"]) == 0
    calls = probe_module(probe).CALLS
    assert calls == [
        ("begin", 0, 0),
        ("after", 0, 0),
        ("begin", 0, 1),
        ("after", 0, 1),
        ("begin", 0, 2),
        ("after", 0, 2),
    ]
    seen = [
        float(r["router/step_seen/l0"])
        for r in read_metrics(tmp_path / "run")
        if r.get("router/step_seen/l0")
    ]
    assert seen == [0.0, 1.0, 2.0]


@pytest.mark.slow
def test_the_examples_train_together(tiny, tmp_path):
    plugins = (
        f"plugins=[{ROOT / 'examples' / 'sinkhorn_router.py'}, {ROOT / 'examples' / 'dense_dispatcher.py'}]"
    )
    args = [*tiny, plugins, "router.name=sinkhorn", "dispatcher.name=dense", "trainer.log_every_n_steps=1"]
    assert main(["fit", *args]) == 0
    rows = read_metrics(tmp_path / "run")
    assert any(r.get("router/max_load_over_mean/l0") for r in rows)
