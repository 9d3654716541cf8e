"""The `expert_parallel` strategy on CPU (gloo, 2 processes launched by Lightning):

- 3 steps at P=2 (batch B per rank, grouplocal) give the losses, weights and optimizer state of
  3 steps in one process (batch 2B, sorted), gradient clipping included;
- the P=2 checkpoint resumes at P=2 with another placement and at P=1 with exactly the saved
  weights and optimizer state, and both continue alike;
- a save during which a rank fails is never taken for a checkpoint;
- recipes/ep-cpu.yaml runs through `moelight fit`, and bad input exits 2 with one message.
Run helpers: tests/ep_train_worker.py, tests/ep_checkpoint_worker.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moelight.errors import MoelightError
from moelight.parallel.checkpoint import MARKER_FILE, read_tensors, write_consolidated
from moelight.recipe import load_recipe

TESTS = Path(__file__).parent
RECIPE = TESTS.parent / "recipes" / "ep-cpu.yaml"
TRAIN = TESTS / "ep_train_worker.py"
B, STEPS = 4, 3


def train(out: Path, cache: Path, *flags: str, **options) -> Path:
    """Run ep_train_worker.py; `options` become `--name value` flags."""
    args = [a for name, value in options.items() for a in (f"--{name}", str(value))]
    proc = subprocess.run(
        [sys.executable, str(TRAIN), str(out), "--cache", str(cache), *args, *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def losses(run: Path) -> list[float]:
    return json.loads((run / "losses.json").read_text())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ep")


@pytest.fixture(scope="module")
def p1(root) -> Path:
    return train(root / "p1", root / "cache", ep=1, devices=1, batch=2 * B, steps=STEPS, dispatcher="sorted")


@pytest.fixture(scope="module")
def p2(root, p1) -> Path:  # after p1: it fills the corpus cache
    return train(root / "p2", root / "cache", ep=2, devices=2, batch=B, steps=STEPS)


def assert_same_state(a: dict, b: dict, tol: float) -> None:
    torch.testing.assert_close(a["state_dict"], b["state_dict"], atol=tol, rtol=tol)
    sa, sb = a["optimizer_states"][0], b["optimizer_states"][0]
    torch.testing.assert_close(sa["state"], sb["state"], atol=tol, rtol=tol)
    strip = [{k: v for k, v in g.items() if k != "params"} for g in sa["param_groups"]]
    assert strip == [{k: v for k, v in g.items() if k != "params"} for g in sb["param_groups"]]


@pytest.mark.slow
def test_two_ranks_train_like_one_process(p1, p2):
    assert len(losses(p2)) == STEPS
    assert losses(p2) == pytest.approx(losses(p1), rel=1e-5)
    assert (p2 / "final.ckpt" / MARKER_FILE).is_file(), "P=2 saves a sharded directory"
    single = torch.load(p1 / "final.ckpt", weights_only=False)
    sharded = torch.load(write_consolidated(p2 / "final.ckpt", p2 / "full.ckpt"), weights_only=False)
    assert sharded["global_step"] == single["global_step"] == STEPS
    assert_same_state(sharded, single, tol=1e-5)


def restored(run: Path) -> dict[str, torch.Tensor]:
    """The state every rank dumped right after restoring, merged (keys are global)."""
    merged: dict[str, torch.Tensor] = {}
    for f in sorted(run.glob("restored.rank*.pt")):
        merged.update(torch.load(f))
    return merged


def assert_restores_exactly(run: Path, checkpoint: Path) -> None:
    saved = read_tensors(checkpoint)
    got = restored(run)
    assert set(got) == set(saved), sorted(set(got) ^ set(saved))[:5]
    bad = [k for k in saved if not torch.equal(got[k], saved[k])]
    assert not bad, f"restored differently: {bad[:5]}"


@pytest.fixture(scope="module")
def resumed(root, p2) -> dict[str, Path]:
    ckpt = root / "p2-final.ckpt"
    shutil.copytree(p2 / "final.ckpt", ckpt)  # resumes below must not see each other's files
    swapped = root / "swapped.json"
    swapped.write_text(json.dumps({"num_devices": 2, "groups": [[1, 3, 5, 7], [0, 2, 4, 6]]}))
    more = STEPS + 2
    return {
        "p2": train(
            root / "r2",
            root / "cache",
            "--dump",
            ep=2,
            devices=2,
            batch=B,
            steps=more,
            resume=ckpt,
            placement=swapped,
        ),
        "p1": train(
            root / "r1",
            root / "cache",
            "--dump",
            ep=1,
            devices=1,
            batch=2 * B,
            steps=more,
            dispatcher="sorted",
            resume=ckpt,
        ),
        "checkpoint": ckpt,
    }


@pytest.mark.slow
def test_resume_at_p2_with_another_placement_restores_the_saved_state(resumed):
    assert_restores_exactly(resumed["p2"], resumed["checkpoint"])


@pytest.mark.slow
def test_resume_at_p1_restores_the_saved_state(resumed):
    assert_restores_exactly(resumed["p1"], resumed["checkpoint"])
    assert (resumed["checkpoint"] / "consolidated.ckpt").is_file()


@pytest.mark.slow
def test_resumed_runs_continue_alike(resumed):
    assert len(losses(resumed["p2"])) == 2  # the two steps after the checkpoint's
    assert losses(resumed["p2"]) == pytest.approx(losses(resumed["p1"]), rel=1e-5)


@pytest.mark.slow
def test_a_save_with_a_failing_rank_is_never_taken(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(TESTS / "ep_checkpoint_worker.py"), str(tmp_path), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
    assert json.loads(out.read_text()) == {"failed_save_keeps_previous": "ok"}


def test_an_unmarked_checkpoint_directory_is_refused(tmp_path):
    from moelight.training.run_dir import prepare_run

    recipe = load_recipe(RECIPE, [f"trainer.out_dir={tmp_path}"])
    (tmp_path / "checkpoints" / "last.ckpt").mkdir(parents=True)  # a save that never finished
    with pytest.raises(MoelightError, match="no complete checkpoint"):
        prepare_run(recipe, "last")
    with pytest.raises(MoelightError, match="incomplete"):
        prepare_run(recipe, str(tmp_path / "checkpoints" / "last.ckpt"))


def test_strategy_is_registered_with_lightning():
    from lightning.pytorch.strategies import StrategyRegistry

    from moelight.parallel.strategy import ExpertParallelStrategy

    assert isinstance(StrategyRegistry.get("expert_parallel"), ExpertParallelStrategy)


# ---- the CLI ---------------------------------------------------------------------------------


def moelight(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "moelight", *args]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.mark.slow
def test_ep_cpu_recipe_runs_with_lightnings_launcher(root, p1):
    out = root / "cli"
    small = [
        "trainer.max_steps=2",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false",
        "data.max_bytes=300000",
        f"data.cache_dir={root / 'cache-cli'}",
        f"trainer.out_dir={out}",
    ]
    proc = moelight("fit", str(RECIPE), *small, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = out / "checkpoints" / "last.ckpt"
    assert (last / MARKER_FILE).is_file()
    header = next((out / "logs").rglob("metrics.csv")).read_text().splitlines()[0]
    assert "dispatch/rows_per_token" in header and "dispatch/all2all_bytes_per_token" in header
    # `--resume last` finds the directory; without expert parallelism it is consolidated first.
    from moelight.training.run_dir import prepare_run

    longer = small + ["trainer.max_steps=4"]
    assert prepare_run(load_recipe(RECIPE, longer), "last") == str(last)
    single = load_recipe(RECIPE, longer + ["trainer.devices=1", "parallel.expert_parallel=1"])
    assert prepare_run(single, "last") == str(last / "consolidated.ckpt")


def placement_file(tmp_path: Path, groups: list[list[int]]) -> str:
    path = tmp_path / "placement.json"
    path.write_text(json.dumps({"num_devices": 2, "groups": groups}))
    return f"parallel.placement={path}"


BAD = {
    "world size": (["trainer.devices=3"], "must divide the world size 3"),
    "expert count": (["parallel.expert_parallel=3"], "must divide model.num_experts"),
    "missing expert": ([[[0, 1, 2], [4, 5, 6, 7]]], "experts [3] are not placed"),
    "duplicated expert": ([[[0, 1, 2, 3], [3, 4, 5, 6]]], "expert 3 is placed twice"),
    "sorted with P>1": (["dispatcher.name=sorted"], "'sorted' runs on one device"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD)
def test_bad_expert_parallel_input_exits_2_with_one_message(tmp_path, case):
    args, message = BAD[case]
    args = [placement_file(tmp_path, a) if isinstance(a, list) else a for a in args]
    proc = moelight("fit", str(RECIPE), *args, f"trainer.out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.count("error:") == 1 and message in proc.stderr, proc.stderr
