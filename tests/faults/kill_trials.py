"""SIGKILL a checkpoint-every-step run at seeded random moments, resume each to the end, and
compare the final weights with an uninterrupted run's. For tests/faults/test_kill_resume.py.

    python tests/faults/kill_trials.py WORK_DIR OUT.json --trials N --seed S --steps K

Runs are forked from this process after the imports, so a trial costs training time, not start-up
time. The parent runs no torch code before the last fork (forking after OpenMP work can hang).
Writes {"trials": [...], "reference_s": ...}; each trial: kill delay, whether the kill landed
before the run finished, the exit codes of the resumes, and whether the final state matched.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY  # noqa: E402

from moelight.cli.main import main  # noqa: E402 (imported before forking: trials skip start-up)


def fork_fit(
    argv: list[str], log: Path, kill_after: float | None = None, clock_from: Path | None = None
) -> tuple[int, bool, float | None, float | None]:
    """(exit code, killed?, seconds until `clock_from` appeared, seconds from then to the end) of
    `moelight fit argv` in a forked child, SIGKILLed `kill_after` seconds after `clock_from`
    exists (after the fork if None)."""
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            code = main(["fit", *argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    start = time.monotonic()
    appeared = None if clock_from is not None else start
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            after = appeared and time.monotonic() - appeared
            return os.waitstatus_to_exitcode(status), False, appeared and appeared - start, after
        if appeared is None and clock_from.exists():
            appeared = time.monotonic()
        if kill_after is not None and appeared is not None and time.monotonic() >= appeared + kill_after:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -9, True, appeared - start, kill_after
        time.sleep(0.002)


def resume_to_end(args: list[str], log: Path) -> list[int]:
    """`--resume last` until done; a run killed before its first checkpoint starts afresh."""
    codes = []
    for _ in range(3):
        mark = log.stat().st_size if log.exists() else 0
        code, *_ = fork_fit([*args, "--resume", "last"], log)
        codes.append(code)
        text = log.read_bytes()[mark:].decode(errors="replace")
        if code == 2 and "no complete checkpoint" in " ".join(text.split()):
            code, *_ = fork_fit(args, log)  # nothing was saved: the same fresh run
            codes.append(code)
        if code == 0 or (code == 2 and "nothing to train" in " ".join(text.split())):
            return codes
    return codes


def main_() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work")
    parser.add_argument("out")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6)
    a = parser.parse_args()
    work = Path(a.work)
    base = [x for x in TINY if not x.startswith(("trainer.max_steps", "trainer.checkpoint_every"))]
    base += [
        f"trainer.max_steps={a.steps}",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.val_check_interval=1000",
        "trainer.logger=none",
    ]
    ref_args = [*base, f"trainer.out_dir={work / 'reference'}"]
    t0 = time.monotonic()
    ref_ckpts = work / "reference" / "checkpoints"
    code, _, _, training_s = fork_fit(ref_args, work / "reference.log", clock_from=ref_ckpts)
    reference_s = time.monotonic() - t0
    assert code == 0, (work / "reference.log").read_text()[-3000:]
    # Most kills land while training saves every step (the clock starts when the checkpoint
    # directory appears, at the first save); every 5th lands anywhere, start-up included.
    rng = random.Random(a.seed)
    trials = []
    for i in range(a.trials):
        args = [*base, f"trainer.out_dir={work / f'trial{i}'}"]
        anywhere = i % 5 == 4
        delay = rng.uniform(0.0, reference_s if anywhere else training_s)
        log = work / f"trial{i}.log"
        clock = None if anywhere else work / f"trial{i}" / "checkpoints"
        code, killed, _, lived_s = fork_fit(args, log, kill_after=delay, clock_from=clock)
        if not killed and not anywhere and lived_s is not None:
            # The machine got faster than during the reference run: aim within this run's life.
            training_s = min(training_s, lived_s)
        codes = resume_to_end(args, log)
        trials.append(
            {"trial": i, "kill_after_s": round(delay, 3), "killed": killed, "first": code, "resumes": codes}
        )
    # No more forks from here on: compare the final states.
    import torch

    def final(run: Path) -> dict:
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        return {"step": ckpt["global_step"], "state": ckpt["state_dict"], "optim": ckpt["optimizer_states"]}

    ref = final(work / "reference")
    for t in trials:
        try:
            got = final(work / f"trial{t['trial']}")
            same = got["step"] == ref["step"] and all(
                torch.equal(got["state"][k], v) for k, v in ref["state"].items()
            )
            t["equal"] = same and got["optim"][0]["state"].keys() == ref["optim"][0]["state"].keys()
            t["equal"] = t["equal"] and all(
                torch.equal(got["optim"][0]["state"][p][n], v)
                for p, s in ref["optim"][0]["state"].items()
                for n, v in s.items()
            )
        except Exception as exc:  # a missing or unreadable checkpoint is a failed trial
            t["equal"] = False
            t["error"] = repr(exc)[:300]
    summary = {"reference_s": reference_s, "training_s": training_s, "trials": trials}
    Path(a.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main_()
