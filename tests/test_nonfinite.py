"""Divergence never poisons a run: a non-finite loss, gradient or weight stops training with exit
status 3 and one message (or skips the step, boundedly), and no non-finite checkpoint is written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from moelight.api import routers
from moelight.cli.main import main
from moelight.errors import ConfigError
from moelight.recipe import load_recipe
from moelight.registry import discover, file_module_name

FAULTY = Path(__file__).parent / "faults" / "faulty_router.py"


def nan_router(from_call: int, until_call: int | None = None) -> list[str]:
    out = [
        f"plugins=[{FAULTY}]",
        "router.name=faulty",
        "router.fault=nan_weights",
        f"router.from_call={from_call}",
        "trainer.check_routing_values=false",  # else the Routing contract check names it first
    ]
    return out + ([f"router.until_call={until_call}"] if until_call else [])


def all_finite(path: Path) -> bool:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    tensors = list(ckpt["state_dict"].values())
    tensors += [
        v for s in ckpt["optimizer_states"][0]["state"].values() for v in s.values() if torch.is_tensor(v)
    ]
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("field", ["optim.lr", "optim.eps", "model.rope_theta", "optim.betas=[0.9, X]"])
def test_recipe_floats_reject_inf_and_nan(field, value):
    override = field.replace("X", value) if "=" in field else f"{field}={value}"
    with pytest.raises(ConfigError, match=field.split("=")[0].replace(".", r"\.")):
        load_recipe(None, [override])


def test_nan_router_stops_with_exit_3_keeping_the_healthy_checkpoints(tiny, tmp_path, capsys):
    ckpts = tmp_path / "run" / "checkpoints"
    assert main(["fit", *tiny, "trainer.max_steps=6", *nan_router(from_call=4)]) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "diverged at step 4" in err and "loss is not finite" in err
    assert "first non-finite routing: layer 0 router (FaultyRouter)" in err
    saved = sorted(p.name for p in ckpts.iterdir())
    assert saved == ["last.ckpt", "step000002.ckpt"]  # step 4's state was never saved
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 2
    assert all(all_finite(ckpts / name) for name in saved)


def test_skip_drops_the_poisoned_steps_only(tiny, tmp_path, capsys):
    argv = ["fit", *tiny, "trainer.max_steps=4", "trainer.on_nonfinite=skip", *nan_router(3, until_call=3)]
    assert main(argv) == 0
    assert "step 3: the loss is not finite" in " ".join(capsys.readouterr().out.split())
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert all_finite(last)
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == 4
    # AdamW counts the steps it took per parameter: 3 of 4 (step 3 was dropped).
    steps = {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert steps == {3.0}


def test_skip_is_bounded(tiny, capsys):
    argv = ["fit", *tiny, "trainer.max_steps=8", "trainer.on_nonfinite=skip", "trainer.max_nonfinite_skips=2"]
    assert main(argv + nan_router(from_call=2)) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert "diverged at step 4" in err and "2 steps in a row skipped" in err
    assert "on_nonfinite=skip" not in err  # its budget ran out: advise something else
    assert "lower optim.lr" in err


def test_a_checkpoint_of_nonfinite_state_is_refused():
    # Defence in depth behind the per-step checks: the save itself refuses non-finite weights or
    # optimizer state, whatever put them there.
    from types import SimpleNamespace

    from moelight.errors import TrainingStopped
    from moelight.training.nonfinite import NonFiniteGuard

    module = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    module(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    trainer = SimpleNamespace(optimizers=[optimizer], global_step=7)
    module.device = torch.device("cpu")
    guard = NonFiniteGuard()
    guard.on_save_checkpoint(trainer, module, {})  # healthy: allowed
    next(iter(optimizer.state.values()))["exp_avg"].fill_(float("inf"))
    with pytest.raises(TrainingStopped, match="diverged by step 7: .*optimizer state.*was not written"):
        guard.on_save_checkpoint(trainer, module, {})
    module.weight.data[0, 0] = float("nan")
    with pytest.raises(TrainingStopped, match="non-finite weights \\(weight\\)"):
        guard.on_save_checkpoint(trainer, module, {})


def one_message(capsys) -> str:
    """The error message; stderr may hold earlier logging noise, but nothing after the message."""
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("error:") == 1, err
    message = err[err.index("error:") :]
    assert "Traceback" not in message, message
    return message


@pytest.mark.parametrize(
    "overrides, what",
    [
        # lr / (1 - beta1) = 1e39 is beyond float32: AdamW itself raises on the step size
        (["optim.lr=1e38"], "the AdamW update overflows float32 (lr 1e+38)"),
        # a finite update that makes the weights infinite: caught after the update, before the
        # next forward blames the router for what the optimizer did (it said "router 'topk' broke
        # the Routing contract", exit 2)
        (
            ["optim.weight_decay=1e300"],
            "the update overflowed the weights (embed, layer 0 attn, layer 0 router",
        ),
        # weights of ~1e30 are finite, but their norm is not: no forward survives them either
        (
            ["optim.lr=1e30"],
            "the update overflowed the weights (embed, layer 0 attn_norm, layer 0 attn and 9 more)",
        ),
    ],
)
def test_finite_but_huge_optimizer_values_end_as_divergence(tiny, tmp_path, capsys, overrides, what):
    argv = ["fit", *tiny, *overrides, "optim.warmup_steps=0", "trainer.checkpoint_every_n_steps=1"]
    assert main(argv) == 3
    err = one_message(capsys)
    assert f"training diverged at step 1: {what}" in err
    assert "no checkpoint of this state was written" in err
    assert not list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))


HOOK_COUNTER = """
import torch
from moelight_plugins.routers.topk import TopKRouter

from moelight.api import routers

CALLS = []


@routers.register("hook_counter")
class HookCounter(TopKRouter):
    \"\"\"Top-k, with NaN weights on the 3rd training forward; records the router hooks.\"\"\"

    forwards = 0

    def begin_step(self, step):
        super().begin_step(step)
        CALLS.append(("begin", step))

    def after_optimizer_step(self):
        CALLS.append(("after", self.step))

    def forward(self, x):
        routing = super().forward(x)
        if self.training:
            self.forwards += 1
            if self.forwards == 3:
                routing.weights = routing.weights * float("nan")
        return routing
"""


def test_a_skipped_step_advances_neither_router_hooks_nor_the_schedule(tiny, tmp_path, monkeypatch):
    discover()  # first, or the installed plugins would land in the copy and vanish with it
    monkeypatch.setattr(routers, "_classes", dict(routers._classes))
    probe = tmp_path / "hook_counter.py"
    probe.write_text(HOOK_COUNTER)
    argv = ["fit", *tiny, "model.n_layers=1", "trainer.max_steps=4", "trainer.on_nonfinite=skip"]
    argv += [f"plugins=[{probe}]", "router.name=hook_counter", "trainer.check_routing_values=false"]
    assert main(argv) == 0
    calls = sys.modules[file_module_name(probe)].CALLS
    # Step 3 was skipped: no after_optimizer_step for it, and the next forward still counts two
    # updates taken before it (begin_step gets optimizer updates taken, not batches).
    assert calls == [
        ("begin", 0),
        ("after", 0),
        ("begin", 1),
        ("after", 1),
        ("begin", 2),
        ("begin", 2),
        ("after", 2),
    ]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4  # batches stepped, as Lightning (and torch.amp) count skipped steps
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 3  # the schedule advanced for the 3 updates only
