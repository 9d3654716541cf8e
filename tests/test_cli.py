"""The CLI's contract: every user mistake is one message and exit status 2, never a traceback."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moelight.cli.main import main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def moelight(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "moelight", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_bad_recipe_exits_2_without_traceback(run_env):
    proc = moelight("fit", str(RECIPES / "quickstart.yaml"), "trainer.max_stepz=3", env=run_env)
    assert proc.returncode == 2
    assert "trainer.max_stepz: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_plugins_lists_bundled_routers_and_dispatchers(run_env):
    proc = moelight("plugins", env=run_env)
    assert proc.returncode == 0, proc.stderr
    for name in ("topk", "balanced", "c2r", "sorted", "top_t", "aux_loss_coef"):
        assert name in proc.stdout


def errors_of(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["router.name=nope"], "installed routers: balanced, c2r"),
        (["data.source=/no/such/corpus.txt"], "data.source"),
        (["router.name=c2r", "router.top_t=3", "profile.path=/no/such/collab.npy"], "/no/such/collab.npy"),
        (["router.name=c2r", "router.top_t=0"], "router.top_t"),
        (["model.top_k=9"], "top_k (9) must be <= num_experts (8)"),
        (["parallel.placement=/no/such/placement.json"], "parallel.placement"),
    ],
)
def test_fit_errors(capsys, tiny, overrides, needle):
    err = errors_of(capsys, "fit", *tiny, *overrides)
    assert needle in " ".join(err.split())  # rich may wrap long lines


def test_c2r_top_t_below_k_minus_1(capsys, tiny, c2r_data):
    lists = c2r_data / "llama_moe_3.5b_2of8_collaborative_list.npy"
    np.save("lists.npy", np.load(lists)[:2])
    err = errors_of(
        capsys, "fit", *tiny, "model.top_k=3", "router.name=c2r", "router.top_t=1", "profile.path=lists.npy"
    )
    assert "router.top_t" in err and "top_k - 1" in " ".join(err.split())


def test_collaborator_file_with_wrong_expert_count(capsys, tiny, c2r_data):
    lists = c2r_data / "qwen1.5_moe_a2.7b_collaborative_list.npy"  # 60 experts, the model has 8
    err = errors_of(capsys, "fit", *tiny, "router.name=c2r", "router.top_t=3", f"profile.path={lists}")
    assert "profile.path" in err


def test_resume_without_checkpoint_and_corrupt_checkpoint(capsys, tiny, tmp_path):
    assert "no complete checkpoint" in errors_of(capsys, "fit", *tiny, "--resume", "last")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert "corrupt" in errors_of(capsys, "fit", *tiny, "--resume", str(bad))


def test_unknown_verb_and_option(capsys):
    assert "allowed: fit" in errors_of(capsys, "fitt")
    assert "unknown option '--resum'" in errors_of(capsys, "fit", "--resum", "last")


def test_a_fresh_run_never_silently_replaces_earlier_checkpoints(capsys, tiny, tmp_path):
    assert main(["fit", *tiny]) == 0
    saved = (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes()
    err = errors_of(capsys, "fit", *tiny)
    assert "already holds checkpoints" in err and "--resume last" in err
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes() == saved
    assert main(["fit", *tiny, "--overwrite"]) == 0
