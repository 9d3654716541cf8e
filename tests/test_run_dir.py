"""Resume does what it says (moelight/training/run_dir.py): `--overwrite` moves the earlier run
aside so `--resume last` never picks it up; `--resume last` takes the newest complete checkpoint
of any name; a moved run directory keeps advancing; a changed model, router or optimizer, or a
`max_steps` already reached, is refused with one message before anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY

from moelight.cli.main import main
from moelight.recipe import load_recipe
from moelight.training.run_dir import prepare_run
from moelight.training.run_lock import LOCK_FILE


def step_of(path: str | Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished 4-step run (checkpoints at steps 2 and 4), copied by each test."""
    root = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOELIGHT_CACHE", str(root / "cache"))
        assert main(["fit", *TINY, f"trainer.out_dir={root / 'run'}"]) == 0
    return root / "run"


@pytest.fixture()
def run(base_run, tiny, tmp_path) -> Path:
    shutil.copytree(base_run, tmp_path / "run")
    return tmp_path / "run"


def errors_of(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    # (Lightning's log handler may still hold an earlier test's closed capture stream: its
    # "Logging error" traceback is not ours, so only the message from "error:" on is checked.)
    assert err.count("error:") == 1 and "Traceback" not in err[err.index("error:") :]
    return " ".join(err.split())


def test_overwrite_moves_the_earlier_run_aside_and_resume_last_never_picks_it(run, tiny):
    assert main(["fit", *tiny, "trainer.max_steps=2", "seed=5", "--overwrite"]) == 0
    ckpts = run / "checkpoints"
    assert step_of(ckpts / "last.ckpt") == 2 and not list(ckpts.glob("last-v*"))
    (moved,) = (run / "replaced").iterdir()
    assert step_of(moved / "checkpoints" / "last.ckpt") == 4  # the earlier run, intact
    assert (moved / "recipe.yaml").is_file()
    resumed = prepare_run(load_recipe(None, tiny + ["trainer.max_steps=6", "seed=5"]), "last")
    assert resumed == str(ckpts / "last.ckpt") and step_of(resumed) == 2


def test_resume_last_finds_the_newest_complete_checkpoint_of_any_name(run, tiny):
    ckpts = run / "checkpoints"
    (ckpts / "last.ckpt").unlink()  # e.g. killed after the step save, before last.ckpt
    (ckpts / ".last.ckpt.partial").write_bytes(b"half a save")
    (ckpts / "step000009.ckpt").write_bytes(b"PK\x03\x04 torn")  # unreadable: never a candidate
    recipe = load_recipe(None, tiny + ["trainer.max_steps=6"])
    assert prepare_run(recipe, "last") == str(ckpts / "step000004.ckpt")


def test_a_moved_run_directory_keeps_advancing(run, tiny, tmp_path):
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    run.rename(moved)
    for max_steps in (6, 8):  # two requeues of the job
        argv = [
            "fit",
            *TINY,
            f"trainer.out_dir={moved}",
            f"trainer.max_steps={max_steps}",
            "--resume",
            "last",
        ]
        assert main(argv) == 0
        assert step_of(moved / "checkpoints" / "last.ckpt") == max_steps
    assert not list((moved / "checkpoints").glob("*-v*.ckpt"))  # no last-v1, step000008-v1...


@pytest.mark.parametrize(
    "override,named",
    [
        ("model.hidden_size=64", "model.hidden_size (checkpoint 32, now 64)"),
        ("model.num_experts=4", "model.num_experts (checkpoint 8, now 4)"),
        ("router.name=balanced", "router.name (checkpoint 'topk', now 'balanced')"),
        ("optim.lr=0.01", "optim.lr (checkpoint 0.003, now 0.01)"),
    ],
)
def test_a_changed_model_or_optimizer_is_refused_before_anything_is_written(
    run, tiny, capsys, override, named
):
    def contents() -> dict:  # the run's files; the lock file records each fit that took it
        return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != LOCK_FILE}

    before = contents()
    err = errors_of(capsys, "fit", *tiny, "trainer.max_steps=6", override, "--resume", "last")
    assert named in err and "model.init_from=" in err
    assert contents() == before  # recipe.yaml, logs untouched


def test_max_steps_already_reached_says_so(run, tiny, capsys):
    err = errors_of(capsys, "fit", *tiny, "--resume", "last")  # max_steps=4, checkpoint at 4
    assert "at step 4 and trainer.max_steps is 4: nothing to train" in err


def test_resume_and_overwrite_exclude_each_other(run, tiny, capsys):
    assert "exclude each other" in errors_of(capsys, "fit", *tiny, "--resume", "last", "--overwrite")


def test_an_unwritable_out_dir_is_one_message(tmp_path, tiny, capsys):
    (tmp_path / "a-file").write_text("")
    err = errors_of(capsys, "fit", *tiny, f"trainer.out_dir={tmp_path / 'a-file' / 'run'}")
    assert "is not writable" in err


def test_a_zip_that_is_not_a_checkpoint_is_called_corrupt(tmp_path, tiny, capsys):
    import zipfile

    with zipfile.ZipFile(tmp_path / "x.ckpt", "w") as zf:
        zf.writestr("hello.txt", "not a checkpoint")
    err = errors_of(capsys, "fit", *tiny, "--resume", str(tmp_path / "x.ckpt"))
    assert "corrupt checkpoint" in err and "weights_only" not in err
