"""SIGKILL chains of checkpoint-every-step runs at seeded random moments, resume each chain to the
end, and compare the final state with uninterrupted runs. For tests/faults/test_kill_resume.py.

    python tests/faults/kill_trials.py WORK_DIR OUT.json --kills N --seed S --steps K

A chain is a fresh run killed at a random moment, then `--resume last` killed at a random moment,
and so on (`--per-chain` kills), then `--resume last` to the end: N kills cost about N + N/per-chain
runs. After each kill every visible checkpoint must load (nothing torn); a kill that leaves a
`.partial` file landed mid-save.

Runs are forked from this process after one warm-up run in it, so a run costs its training steps,
not Python, Lightning and data start-up (about 0.1 s a step instead of ~10 s). The warm-up leaves a
single thread (OMP_NUM_THREADS=1), so forking after it is safe. Two workers fork chains at once
(2 cores), each first timing a probe run (stopped cleanly half-way, then resumed) under that same
load to spread its kill moments over start-up, training steps, saves and the end. References: one
uninterrupted run in a fresh `python -m moelight fit` process, which the chains, an uninterrupted
forked run and the probes must all equal, so state that only a forked child inherits cannot make
them agree by accident.
Writes {"chains": [...], "references_equal_fresh": {...}, "timing": {...}}.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: no thread pool, forking stays safe

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from conftest import TINY  # noqa: E402

from faults.helpers import same_state  # noqa: E402
from moelight.cli.main import main  # noqa: E402

WORKERS = 2
SAVE_S = 0.01  # a kill up to this long after a save began lands in it (or just after)
HUNG_S = 120  # a run that takes this long (they take about a second) is hung: killed, a failure


def newest_step_file(run: Path) -> int:
    """The highest N of the visible `stepNNNNNN.ckpt` files (published, so complete), 0 if none."""
    try:
        names = os.listdir(run / "checkpoints")
    except FileNotFoundError:
        return 0
    return max((int(n[4:10]) for n in names if n.startswith("step") and n.endswith(".ckpt")), default=0)


def fork_fit(
    argv: list[str], log: Path, clock_from: Callable[[], bool] | None = None, delay: float | None = None
) -> tuple[int, bool, float | None]:
    """Run `moelight fit argv` in a forked child; start a clock at the fork (`clock_from` None) or
    when `clock_from()` first holds, and SIGKILL the child `delay` seconds later (never if None).
    Returns (exit code, killed?, seconds from the fork until the clock started)."""
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
        sys.stdout.flush()
        os._exit(code)
    start = time.monotonic()
    clock = start if clock_from is None else None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False, clock and clock - start
        now = time.monotonic()
        if clock is None and clock_from():
            clock = now
        if clock is not None and delay is not None and now >= clock + delay:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -9, True, clock - start
        if now > start + HUNG_S:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise RuntimeError(f"fit {argv} hung for {HUNG_S} s; see {log}")
        time.sleep(0.001)


def saved_steps(run: Path) -> tuple[dict[str, int], list[str]]:
    """({name: global_step} of the visible checkpoints, [names that do not load: torn])."""
    steps, torn = {}, []
    ckpts = run / "checkpoints"
    for p in sorted(ckpts.glob("*.ckpt")) if ckpts.is_dir() else []:
        try:
            steps[p.name] = torch.load(p, map_location="cpu", weights_only=True)["global_step"]
        except Exception:
            torn.append(p.name)
    return steps, torn


def partials(run: Path) -> set[tuple[str, int]]:
    """The `.partial` files of a run's checkpoints (name, mtime): a save in progress or killed."""
    found = set()
    for p in run.glob("checkpoints/.*.partial*"):
        with contextlib.suppress(FileNotFoundError):  # published meanwhile
            found.add((p.name, p.stat().st_mtime_ns))
    return found


def saved(run: Path, step: int) -> Callable[[], bool]:
    """Holds once the checkpoint of `step` (or a later one) is published."""
    return lambda: newest_step_file(run) >= step


def saving(run: Path, step: int) -> Callable[[], bool]:
    """Holds once a save of step `step - 1` or later has begun (a new `.partial` file)."""
    old = partials(run)
    return lambda: newest_step_file(run) >= step - 1 and bool(partials(run) - old)


class Timing(NamedTuple):
    """Measured by a worker's probe: seconds from the fork to the first new checkpoint (start-up and
    one step) of a fresh and of a resumed run, and of one more step."""

    fresh_first_s: float
    resume_first_s: float
    step_s: float


def probe(base: list[str], run: Path, steps: int) -> Timing:
    """A run stopped cleanly at half the steps, then resumed to the end, timed under the load the
    chains will see; its final state is also compared with the reference."""
    half = steps // 2
    args, log = [*base, f"trainer.out_dir={run}"], run.with_suffix(".log")
    t = time.monotonic()
    code, _, first_s = fork_fit([*args, f"trainer.max_steps={half}"], log, saved(run, 1))
    fresh_s = time.monotonic() - t
    assert code == 0 and first_s is not None, log.read_text()[-3000:]
    step_s = (fresh_s - first_s) / (half - 1)
    code, _, resumed_s = fork_fit([*args, "--resume", "last"], log, saved(run, half + 1))
    assert code == 0 and resumed_s is not None, log.read_text()[-3000:]
    return Timing(first_s, resumed_s, step_s)


def run_chain(base: list[str], run: Path, rng: random.Random, kills: int, timing: Timing, steps: int) -> dict:
    """Kill up to `kills` runs of one chain, then resume it to the end; returns its record. Each kill
    lands in start-up or the first step (clock from the fork), within the step after one of the
    next 2 checkpoints is published (a step, a save, or after the last save), or within 10 ms of the
    start of a save (mostly mid-save)."""
    args, log = [*base, f"trainer.out_dir={run}"], run.with_suffix(".log")
    events = []
    for _ in range(kills):
        saved_now, _ = saved_steps(run)
        start = max(saved_now.values(), default=0)
        if start >= steps:
            break
        # Where the clock starts: the fork (start-up or first step), the publication of one of the
        # next 2 checkpoints (a step, a save, or after the last save), or the start of such a save.
        # A fresh run is killed in start-up more often: before any checkpoint exists.
        kind = rng.choice(["fork", "fork" if start == 0 else "saved", "saved", "saving"])
        after = rng.randint(start + 1, min(steps, start + 2))
        first = timing.resume_first_s if start else timing.fresh_first_s
        clock, delay = {
            "fork": (None, rng.uniform(0.0, first)),
            "saved": (saved(run, after), rng.uniform(0.0, timing.step_s)),
            "saving": (saving(run, after), rng.uniform(0.0, SAVE_S)),
        }[kind]
        before = partials(run)
        argv = [*args, "--resume", "last"] if saved_now else args
        code, killed, _ = fork_fit(argv, log, clock, delay)
        now, torn = saved_steps(run)
        events.append(
            {"from_step": start, "clock": kind, "after_step": after, "delay_s": round(delay, 3)}
            | {"killed": killed}
            | {"code": code, "mid_save": bool(partials(run) - before), "torn": torn}
            | {"saved_after": max(now.values(), default=0)}
        )
        if not killed:
            break
    saved_now, _ = saved_steps(run)
    final_from = max(saved_now.values(), default=0)
    mark = log.stat().st_size if log.exists() else 0
    final, _, _ = fork_fit([*args, "--resume", "last"] if saved_now else args, log)
    said = " ".join(log.read_bytes()[mark:].decode(errors="replace").split())
    # Killed after its last save, the chain is complete: the resume must say so (exit 2).
    done = final == 0 or (final_from == steps and final == 2 and "nothing to train" in said)
    return {
        "run": run.name,
        "events": events,
        "final_from_step": final_from,
        "final_code": final,
        "done": done,
    }


def worker(w: int, a: argparse.Namespace, base: list[str]) -> None:
    """A probe, then chains until this worker's share of landed kills; results to worker<w>.json."""
    work = Path(a.work)
    timing = probe(base, work / f"w{w}probe", a.steps)
    target = a.kills // WORKERS + (w < a.kills % WORKERS)
    rng = random.Random(a.seed * 1000 + w)
    chains, landed = [], 0
    while landed < target and len(chains) < 4 * target:
        kills = min(a.per_chain, target - landed)
        chain = run_chain(base, work / f"w{w}chain{len(chains)}", rng, kills, timing, a.steps)
        landed += sum(e["killed"] for e in chain["events"])
        chains.append(chain)
    record = {"chains": chains, "probe": f"w{w}probe", "timing": timing._asdict()}
    (work / f"worker{w}.json").write_text(json.dumps(record))


def final_states(run: Path) -> list[dict]:
    """Every checkpoint of the newest step: what `--resume last` may pick. A kill between the step
    file's and last.ckpt's saves leaves last.ckpt a step behind, which is not the run's end."""
    saved, _ = saved_steps(run)
    newest = max(saved.values())
    states = []
    for name, step in saved.items():
        if step == newest:
            ckpt = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
            states.append({"step": step, "state": ckpt["state_dict"], "optim": ckpt["optimizer_states"]})
    return states


def matches(run: Path, ref: dict) -> bool:
    return all(same_state(s, ref) for s in final_states(run))


def main_() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work")
    parser.add_argument("out")
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--per-chain", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10)
    a = parser.parse_args()
    work = Path(a.work)
    base = [x for x in TINY if not x.startswith(("trainer.max_steps", "trainer.checkpoint_every"))]
    base += [
        f"trainer.max_steps={a.steps}",
        "trainer.checkpoint_every_n_steps=1",
        "trainer.val_check_interval=1000",
        "trainer.logger=none",
    ]
    t0 = time.monotonic()
    with open(work / "fresh.log", "wb") as fresh_log:
        fresh = subprocess.Popen(  # runs beside the warm-up, on the other core
            [sys.executable, "-m", "moelight", "fit", *base, f"trainer.out_dir={work / 'fresh'}"],
            stdout=fresh_log,
            stderr=subprocess.STDOUT,
        )
    with (
        open(work / "warmup.log", "w") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        assert main(["fit", *base, f"trainer.out_dir={work / 'warmup'}"]) == 0
    torch.set_num_threads(1)
    warmup_s = time.monotonic() - t0
    # An uninterrupted forked run: a reference that shares the chains' warmed-up parent.
    t1 = time.monotonic()
    code, _, _ = fork_fit([*base, f"trainer.out_dir={work / 'forked'}"], work / "forked.log")
    forked_s = time.monotonic() - t1
    assert code == 0, (work / "forked.log").read_text()[-3000:]
    pids = []
    for w in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            try:
                worker(w, a, base)
                os._exit(0)
            except BaseException:
                import traceback

                traceback.print_exc()
                os._exit(1)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert codes == [0] * WORKERS, f"kill workers exited {codes}"
    chains_s = time.monotonic() - t1 - forked_s
    assert fresh.wait(timeout=600) == 0, (work / "fresh.log").read_text()[-3000:]
    ref = final_states(work / "fresh")[0]
    workers = [json.loads((work / f"worker{w}.json").read_text()) for w in range(WORKERS)]
    chains = [c for rec in workers for c in rec["chains"]]
    for c in chains:
        try:
            c["equal"] = c["done"] and matches(work / c["run"], ref)
        except Exception as exc:  # a missing or unreadable checkpoint is a failed chain
            c["equal"], c["error"] = False, repr(exc)[:300]
    # Uninterrupted references besides the fresh process: a forked run, and each clean stop + resume.
    others = ["fresh", "forked", *(rec["probe"] for rec in workers)]
    summary = {
        "steps": a.steps,
        "chains": chains,
        "references_equal_fresh": {r: matches(work / r, ref) for r in others},
        "timing": {"warmup_s": warmup_s, "forked_run_s": forked_s, "chains_s": chains_s}
        | {f"worker{w}": rec["timing"] for w, rec in enumerate(workers)},
    }
    Path(a.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main_()
