"""Divergence never poisons a run: a non-finite loss, gradient or weight stops training with exit
status 3 and one message (or skips the step, boundedly), and no non-finite checkpoint is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moelight.cli.main import main
from moelight.errors import ConfigError
from moelight.recipe import load_recipe

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


def test_overflowing_weights_are_never_saved(tiny, tmp_path, capsys):
    # A finite gradient times a huge learning rate overflows the weights after step 1: that
    # checkpoint must not be written (the loss of step 2 would only show it one step later).
    argv = ["fit", *tiny, "optim.lr=1e30", "optim.warmup_steps=0", "trainer.checkpoint_every_n_steps=1"]
    assert main(argv) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert "non-finite weights" in err and "was not written" in err
    assert not list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
