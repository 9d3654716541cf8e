"""End-to-end training: the loss falls, checkpoints resume exactly where the run stopped."""

import csv
from pathlib import Path

import pytest
import torch

from moelight.cli.fit import fit
from moelight.cli.main import main
from moelight.recipe import load_recipe


def read_metrics(run_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        rows += list(csv.DictReader(path.open()))
    return rows


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"], ckpt["global_step"]


@pytest.mark.slow
def test_loss_falls_and_metrics_are_logged(tiny, tmp_path):
    steps = ["trainer.max_steps=60", "trainer.val_check_interval=20", "trainer.log_every_n_steps=4"]
    # In-process (conftest's rank_zero_restored keeps an earlier rank-1 Trainer from silencing the CSV logger).
    assert fit(load_recipe(None, tiny + steps)) == 0
    rows = read_metrics(tmp_path / "run")
    train = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    # From ~5.5 (uniform over 260 tokens) to well below; single batches are noisy, so average.
    assert sum(train[-3:]) / 3 < sum(train[:3]) / 3 - 1.0, train
    assert len(val) == 3 and val[2] < val[0] - 0.5, val
    logged = {k for r in rows for k, v in r.items() if v}
    for key in (
        "tokens_per_s",
        "load/cv/l0",
        "load/max_over_mean/l1",
        "collab/top1_share",
        "aux/load_balance/l0",
        "dispatch/devices_per_token",
        "train/ppl",
        "val/ppl",
    ):
        assert key in logged, key


@pytest.mark.slow
def test_resume_last_continues_step_count_and_data(tiny, tmp_path):
    # Uninterrupted: 6 steps. Interrupted: 3 steps, then `--resume last` up to 6.
    straight = tiny + ["trainer.max_steps=6", f"trainer.out_dir={tmp_path / 'straight'}"]
    assert main(["fit", *straight]) == 0
    first = tiny + ["trainer.max_steps=3", f"trainer.out_dir={tmp_path / 'split'}"]
    assert main(["fit", *first]) == 0
    assert final_weights(tmp_path / "split")[1] == 3
    resumed = tiny + ["trainer.max_steps=6", f"trainer.out_dir={tmp_path / 'split'}"]
    assert main(["fit", *resumed, "--resume", "last"]) == 0

    want, want_step = final_weights(tmp_path / "straight")
    got, got_step = final_weights(tmp_path / "split")
    assert got_step == want_step == 6
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)
