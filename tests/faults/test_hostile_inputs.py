"""Inputs of a careless or hostile user end in one line and exit 2, never a traceback, and
nothing already saved is lost: a binary recipe, duplicate YAML keys, a damaged zip header on
last.ckpt, a router returning something else than a Routing, a plugin raising at import, and
input files (`model.init_from`, `profile.path`, `parallel.placement`) that are bad, refused
before anything is written to `out_dir`."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import TINY

from faults.helpers import FAULTY
from moelight.cli.main import main


def one_error(capsys, argv: list[str], code: int = 2) -> str:
    got = main(argv)
    err = capsys.readouterr().err
    assert got == code, (argv, err[-3000:])
    assert err.count("error:") == 1 and "Traceback" not in err, err[-3000:]
    return " ".join(err[err.index("error:") :].split())


def nospace(text: str) -> str:
    """Rich wraps long messages at the terminal width, also inside paths."""
    return "".join(text.split())


def test_binary_recipe(tmp_path, run_env, capsys):
    recipe = tmp_path / "model.bin"
    recipe.write_bytes(bytes(range(256)) * 8)
    err = one_error(capsys, ["fit", str(recipe)])
    assert nospace(f"{recipe}: a recipe must be UTF-8 text") in nospace(err)


def test_duplicate_yaml_keys_name_key_and_lines(tmp_path, run_env, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  n_layers: 2\nseed: 3\nmodel:\n  hidden_size: 32\n")
    err = one_error(capsys, ["fit", str(recipe)])
    assert "key 'model' appears twice (lines 1 and 4)" in err
    nested = tmp_path / "n.yaml"
    nested.write_text("model:\n  n_layers: 2\n  n_layers: 3\n")
    assert "key 'n_layers' appears twice (lines 2 and 3)" in one_error(capsys, ["fit", str(nested)])


def flip_header(path, offset: int = 40, n: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_zip_header_of_last_ckpt(tmp_path, run_env, capsys):
    out = tmp_path / "run"
    tiny = [*TINY, f"trainer.out_dir={out}"]
    assert main(["fit", *tiny]) == 0  # step000004.ckpt and last.ckpt, both at step 4
    ckpts = out / "checkpoints"
    last = ckpts / "last.ckpt"
    flip_header(last)
    for argv in (
        ["eval", str(last), "--tasks", "moelight_python_mc"],
        ["profile", str(last), "--out", str(tmp_path / "prof")],
        ["convert", "export", str(last), "--out", str(tmp_path / "hf"), "--arch", "mixtral"],
        ["fit", *TINY, f"trainer.out_dir={tmp_path / 'fresh'}", f"model.init_from={last}"],
    ):
        assert nospace(f"corrupt checkpoint {last}:") in nospace(one_error(capsys, argv)), argv
    # --resume last falls back to the newest intact checkpoint (step 4) and trains on from there
    assert main(["fit", *tiny, "trainer.max_steps=6", "--resume", "last"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6


@pytest.mark.parametrize("fault", ["tuple", "none_returned"])
def test_router_returning_no_routing_is_named(fault, tmp_path, run_env, capsys):
    argv = ["fit", *TINY, f"trainer.out_dir={tmp_path / 'run'}", f"plugins=[{FAULTY}]", "router.name=faulty"]
    err = one_error(capsys, [*argv, f"router.fault={fault}"])
    got = "tuple" if fault == "tuple" else "NoneType"
    assert "router 'faulty' (FaultyRouter)" in err and f"must return a Routing, got {got}" in err


RAISING = "import math\n\nLIMIT = math.inf\nraise RuntimeError('no GPU driver found')\n"


def test_plugin_raising_at_import(tmp_path, run_env, capsys):
    plugin = tmp_path / "raising.py"
    plugin.write_text(RAISING)
    expected = f"plugin {plugin} raised RuntimeError at import ({plugin}:4): no GPU driver found"
    assert nospace(expected) in nospace(one_error(capsys, ["fit", *TINY, f"plugins=[{plugin}]"]))
    assert nospace(expected) in nospace(one_error(capsys, ["plugins", str(plugin)]))


@pytest.mark.parametrize(
    "override",
    [
        "model.init_from=NOFILE.ckpt",
        "model.init_from=GARBAGE",
        "profile.path=NOFILE",
        "parallel.placement=NOFILE.json",
        "parallel.placement=GARBAGE",
    ],
)
def test_bad_input_files_are_refused_before_out_dir_is_written(override, tmp_path, run_env, capsys):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(2048))
    bad_json = tmp_path / "placement.json"
    bad_json.write_text('{"num_devices": 1, "groups": "oops"}')
    value = override.replace("NOFILE", str(tmp_path / "missing"))
    value = value.replace("model.init_from=GARBAGE", f"model.init_from={garbage}")
    value = value.replace("parallel.placement=GARBAGE", f"parallel.placement={bad_json}")
    out = tmp_path / "run"
    one_error(capsys, ["fit", *TINY, f"trainer.out_dir={out}", value])
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
