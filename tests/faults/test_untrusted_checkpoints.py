"""A checkpoint is data: no file moelight reads from a checkpoint or run directory may run code.

A pickle whose unpickling creates a marker file is planted at every such file (a single .ckpt,
a sharded directory's metadata, its DCP `.metadata`, its consolidated single file, the legacy
`meta.pt`) and handed to every verb that reads checkpoints: `fit --resume last`, `fit --resume
PATH`, `model.init_from`, `eval`, `profile`, `convert export`. Each must end in one line, exit
2, and the marker must never appear. A control proves the plant works: unpickled the ordinary
way, it does create the marker. The honest form of the same directory loads.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY
from torch import nn

from moelight.cli.main import main
from moelight.load import single_process_model
from moelight.parallel.checkpoint import MARKER_FILE, save_sharded
from moelight.recipe import load_recipe


class Plant:
    """Unpickling this calls `open(marker, "w")`: the file appears iff the pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def evil_torch_file(path: Path, marker: Path, step: int = 2) -> Path:
    torch.save({"global_step": step, "state_dict": {}, "payload": Plant(marker)}, path)
    return path


def honest_sharded(path: Path, overrides: list[str]) -> Path:
    """A real sharded checkpoint (rank 0 of one process) of the tiny recipe's random model."""
    recipe = load_recipe(None, overrides)
    torch.manual_seed(0)
    holder = nn.Module()
    holder.model = single_process_model(recipe)  # the training module's attribute name
    ckpt = {
        "global_step": 2,
        "epoch": 0,
        "state_dict": holder.state_dict(),
        "hyper_parameters": {"recipe": recipe.model_dump(mode="json")},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP without a process group warns it assumes one process
        save_sharded(ckpt, path, holder, [])
    return path


def plant(kind: str, path: Path, marker: Path, overrides: list[str]) -> Path:
    if kind == "single file":
        return evil_torch_file(path, marker)
    honest_sharded(path, overrides)
    if kind == "legacy meta.pt":
        (path / "meta.json").unlink()
        evil_torch_file(path / "meta.pt", marker)
    elif kind == "DCP .metadata":
        (path / ".metadata").write_bytes(pickle.dumps(Plant(marker)))
    elif kind == "consolidated.ckpt":
        evil_torch_file(path / "consolidated.ckpt", marker)
    return path


KINDS = ["single file", "legacy meta.pt", "DCP .metadata", "consolidated.ckpt"]


def commands(ckpt: Path, tiny: list[str], tmp: Path) -> dict[str, list[str]]:
    return {
        "fit --resume last": ["fit", *tiny, "--resume", "last"],
        "fit --resume PATH": ["fit", *tiny, "--resume", str(ckpt)],
        "init_from": ["fit", *tiny, f"model.init_from={ckpt}", f"trainer.out_dir={tmp / 'fresh'}"],
        "eval": ["eval", str(ckpt), "--tasks", "moelight_python_mc"],
        "profile": ["profile", str(ckpt), "--out", str(tmp / "prof")],
        "convert export": ["convert", "export", str(ckpt), "--out", str(tmp / "hf"), "--arch", "mixtral"],
        "generate": ["generate", str(ckpt), "--prompt", "x", "--max-new-tokens", "2"],
        "chat": ["chat", str(ckpt), "--max-new-tokens", "2"],
    }


def test_the_plant_runs_when_unpickled_unsafely(tmp_path):
    marker = tmp_path / "ran"
    torch.load(evil_torch_file(tmp_path / "x.ckpt", marker), weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads(pickle.dumps(Plant(marker)))
    assert marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_no_planted_pickle_runs(kind, tmp_path, run_env, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # `chat` of a loadable model reads its prompts
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    tiny = [*TINY, f"trainer.out_dir={run}"]
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    ckpt = plant(kind, ckpts / "last.ckpt", marker, tiny)
    for name, argv in commands(ckpt, tiny, tmp_path).items():
        code = main(argv)
        err = capsys.readouterr().err
        assert not marker.exists(), f"{kind}: `{name}` ran code from the checkpoint"
        if kind == "consolidated.ckpt" and code == 0 and not name.startswith("fit --resume"):
            continue  # it reads the shards one by one and never opens consolidated.ckpt (a resume does)
        assert code == 2, f"{kind}: `{name}` exited {code}: {err[-2000:]}"
        assert err.count("error:") == 1 and "Traceback" not in err, (name, err)  # one message
        err = " ".join(err[err.index("error:") :].split())  # (rich wraps it at the terminal width)
        assert "weights_only" not in err, (name, err)  # never advise unsafe loading
        reads_it = kind != "consolidated.ckpt" or name.startswith("fit --resume")
        if kind != "single file" and name != "fit --resume last" and reads_it:
            planted = {"legacy meta.pt": "meta.pt", "DCP .metadata": ".metadata"}.get(kind, kind)
            assert planted in err or "corrupt checkpoint" in err, (name, err)


def test_honest_sharded_checkpoint_still_loads(tmp_path, run_env, capsys):
    """The control: the same directory without a plant is read by init_from and profile."""
    run = tmp_path / "run"
    tiny = [*TINY, f"trainer.out_dir={run}"]
    ckpt = honest_sharded(tmp_path / "last.ckpt", tiny)
    assert (ckpt / MARKER_FILE).is_file() and (ckpt / "meta.json").is_file()
    assert not (ckpt / "meta.pt").exists()
    json.loads((ckpt / "meta.json").read_text())  # plain JSON
    assert main(["profile", str(ckpt), "--out", str(tmp_path / "prof"), "--max-tokens", "256"]) == 0
    assert main(["fit", *tiny, f"model.init_from={ckpt}", "trainer.max_steps=1"]) == 0


def test_honest_legacy_meta_pt_is_read_safely(tmp_path, run_env):
    """A directory written before meta.json (meta.pt, a torch pickle of plain values) still loads."""
    from moelight.checkpoint import json_state
    from moelight.parallel.checkpoint import read_meta

    tiny = [*TINY, f"trainer.out_dir={tmp_path / 'run'}"]
    ckpt = honest_sharded(tmp_path / "last.ckpt", tiny)
    meta = json_state.loads((ckpt / "meta.json").read_text())
    torch.save(meta, ckpt / "meta.pt")
    (ckpt / "meta.json").unlink()
    assert read_meta(ckpt)["moelight_sharded"] == meta["moelight_sharded"]


def test_foreign_sharded_directory(tmp_path, run_env, capsys):
    """A directory with a marker and DCP metadata but another tool's metadata: one line."""
    tiny = [*TINY, f"trainer.out_dir={tmp_path / 'run'}"]
    ckpt = honest_sharded(tmp_path / "foreign.ckpt", tiny)
    (ckpt / "meta.json").write_text(json.dumps({"global_step": 2, "state": {"x": 1}}))
    for argv in commands(ckpt, tiny, tmp_path).values():
        if "last" in argv:
            continue
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "not a moelight checkpoint" in err and "Traceback" not in err, (argv, err)
    shutil.rmtree(ckpt)
