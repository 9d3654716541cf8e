"""Damaged or wrong inputs end in one message and exit status 2, never a traceback: corrupt
checkpoints (never with advice to load unsafely), non-UTF-8 data, malformed `extends:`, broken
plugin files, a file where a directory belongs, truncated expert-parallel shards, zero devices."""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from moelight.cli.main import main
from moelight.errors import MoelightError
from moelight.recipe import load_recipe


def errors_of(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    # (Lightning's log handler may still hold an earlier test's closed capture stream: its
    # "Logging error" traceback is not ours, so only the message from "error:" on is checked.)
    assert err.count("error:") == 1 and "Traceback" not in err[err.index("error:") :]
    return " ".join(err.split())


@pytest.fixture(params=["random", "zip"])
def bad_ckpt(request, tmp_path) -> Path:
    path = tmp_path / "model.ckpt"
    if request.param == "random":
        path.write_bytes(os.urandom(4096))
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("notes/readme.txt", "a valid zip, not a torch checkpoint")
    return path


def test_corrupt_checkpoint_to_init_from_profile_and_convert(capsys, tiny, tmp_path, bad_ckpt):
    for argv in (
        ["fit", *tiny, f"model.init_from={bad_ckpt}"],
        ["profile", str(bad_ckpt), "--out", str(tmp_path / "prof")],
        ["convert", "export", str(bad_ckpt), "--out", str(tmp_path / "hf"), "--arch", "mixtral"],
    ):
        err = errors_of(capsys, *argv)
        assert f"corrupt checkpoint {bad_ckpt}" in err and "weights_only" not in err, argv


def test_non_utf8_jsonl(capsys, tiny, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    err = errors_of(capsys, "fit", *tiny, f"data.source={data}")
    assert "bad.jsonl:2: not UTF-8 text" in err


@pytest.mark.parametrize("value", ["[a.yaml, b.yaml]", "3"])
def test_extends_must_name_one_file(tmp_path, value):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"extends: {value}\n")
    with pytest.raises(MoelightError, match="extends: must name one recipe file"):
        load_recipe(recipe)


def test_plugin_file_with_a_syntax_error(tmp_path):
    plugin = tmp_path / "broken_router.py"
    plugin.write_text("def oops(:\n")
    with pytest.raises(
        MoelightError, match=r"plugins\.0: plugin .*broken_router.py has a syntax error: .*:1"
    ):
        load_recipe(None, [f"plugins=[{plugin}]"])


def test_profile_out_naming_a_file(capsys, tmp_path, bad_ckpt):
    (tmp_path / "taken").write_text("")
    err = errors_of(capsys, "profile", str(bad_ckpt), "--out", str(tmp_path / "taken"))
    assert "is a file" in err


def test_truncated_expert_parallel_shard(tmp_path):
    from moelight.moe.experts import ExpertWeights
    from moelight.parallel.checkpoint import read_tensors, save_sharded

    module = nn.Module()
    module.experts = ExpertWeights([0, 1], 4, 8)
    path = tmp_path / "last.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP without a process group warns it assumes one process
        save_sharded({"global_step": 1, "state_dict": module.state_dict()}, path, module, [])
    (shard,) = path.glob("*.distcp")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(MoelightError, match="corrupt checkpoint .*a shard cannot be read"):
        read_tensors(path)
    torch.manual_seed(0)  # nothing above may leak state into other tests' seeds


def test_bench_comm_with_zero_devices(capsys):
    assert "at least 1" in errors_of(capsys, "bench", "comm", "--devices", "0")
