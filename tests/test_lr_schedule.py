"""`optim.schedule: deepspeed_warmup` against DeepSpeed's WarmupLR, re-implemented here from its
definition in deepspeed/runtime/lr_schedules.py (not imported), driven as DeepSpeed's engine
drives it: built at iteration -1, `step()` after every optimizer step."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from moelight.cli.fit import fit
from moelight.recipe import OptimConfig, load_recipe
from moelight.training.optim import build_optimizer


class DeepSpeedWarmupLR:
    """WarmupLR as lr_schedules.py defines it: warmup_num_steps = max(2, n); at iteration i < n,
    gamma = log(i + 1) / log(n) (log) or i / n (linear), else 1; lr = min + (max - min) * gamma;
    before the first step() (iteration -1) the lr is warmup_min_lr."""

    def __init__(
        self, optimizer, warmup_min_lr: float, warmup_max_lr: float, warmup_num_steps: int, kind: str
    ):
        self.optimizer = optimizer
        self.min_lr, self.max_lr = warmup_min_lr, warmup_max_lr
        self.n = max(2, warmup_num_steps)
        self.kind = kind
        self.iteration = -1
        self._apply()

    def _lr(self) -> float:
        if self.iteration < 0:
            return self.min_lr
        if self.iteration < self.n:
            if self.kind == "log":
                gamma = math.log(self.iteration + 1) / math.log(self.n)
            else:
                gamma = self.iteration / self.n
        else:
            gamma = 1.0
        return self.min_lr + (self.max_lr - self.min_lr) * gamma

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()

    def step(self) -> None:
        self.iteration += 1
        self._apply()


def lrs_per_step(optimizer, scheduler, steps: int) -> list[float]:
    """The lr each optimizer step runs with, stepping the scheduler after it (both engines' order)."""
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("kind", ["log", "linear"])
@pytest.mark.parametrize("warmup,min_ratio", [(10, 0.0), (7, 0.1), (1, 0.0)])
def test_deepspeed_warmup_matches_warmup_lr_at_every_step(kind, warmup, min_ratio):
    lr, steps = 2e-5, 40
    cfg = OptimConfig(
        lr=lr, schedule="deepspeed_warmup", warmup_type=kind, warmup_steps=warmup, min_lr_ratio=min_ratio
    )
    ours = build_optimizer(torch.nn.Linear(4, 4), cfg, total_steps=steps)
    got = lrs_per_step(ours["optimizer"], ours["lr_scheduler"]["scheduler"], steps)

    ref_opt = torch.optim.AdamW(torch.nn.Linear(4, 4).parameters(), lr=lr)
    ref = DeepSpeedWarmupLR(ref_opt, min_ratio * lr, lr, warmup, kind)
    want = lrs_per_step(ref_opt, ref, steps)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-18)
    assert want[-1] == lr  # constant after the warm-up: no decay


def test_warmup_ratio_gives_transformers_warmup_steps():
    # transformers fills warmup_num_steps "auto" with ceil(warmup_ratio x total steps).
    lr, steps = 1e-3, 50
    cfg = OptimConfig(lr=lr, schedule="deepspeed_warmup", warmup_ratio=0.1, min_lr_ratio=0.0)
    ours = build_optimizer(torch.nn.Linear(2, 2), cfg, total_steps=steps)
    got = lrs_per_step(ours["optimizer"], ours["lr_scheduler"]["scheduler"], steps)
    ref_opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=lr)
    want = lrs_per_step(ref_opt, DeepSpeedWarmupLR(ref_opt, 0.0, lr, math.ceil(0.1 * steps), "log"), steps)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-18)


def test_warmup_type_needs_the_deepspeed_schedule():
    with pytest.raises(ValueError, match="warmup_type applies to schedule: deepspeed_warmup"):
        OptimConfig(warmup_type="log")


def test_fit_runs_the_schedule_step_by_step(tiny, tmp_path):
    """The schedule as Lightning steps it in a real run: the learning-rate monitor's value at each
    step equals WarmupLR's."""
    lr, steps = 1e-3, 8
    overrides = tiny + [
        f"trainer.max_steps={steps}",
        "trainer.log_every_n_steps=1",
        "trainer.accumulate_grad_batches=2",
        f"optim.lr={lr}",
        "optim.schedule=deepspeed_warmup",
        "optim.warmup_steps=5",
        "optim.min_lr_ratio=0",
        "trainer.logger=csv",
    ]
    assert fit(load_recipe(None, overrides)) == 0
    rows = []
    for path in sorted((tmp_path / "run").glob("logs/version_*/metrics.csv")):
        rows += list(csv.DictReader(path.open()))
    logged = {int(r["step"]): float(r["lr-AdamW/pg1"]) for r in rows if r.get("lr-AdamW/pg1")}
    ref_opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=lr)
    want = lrs_per_step(ref_opt, DeepSpeedWarmupLR(ref_opt, 0.0, lr, 5, "log"), steps)
    assert sorted(logged) == list(range(steps))
    assert [logged[s] for s in range(steps)] == pytest.approx(want, rel=1e-9, abs=1e-15)
