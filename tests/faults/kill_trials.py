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
(2 cores). Two references: an uninterrupted forked run, and one in a fresh `python -m moelight fit`
process, so state that only a forked child inherits cannot make the chains agree by accident.
Writes {"chains": [...], "forked_equals_fresh": bool, "timing": {...}}.
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
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from conftest import TINY  # noqa: E402

from moelight.cli.main import main  # noqa: E402

WORKERS = 2


def fork_fit(
    argv: list[str], log: Path, kill_after: float | None = None, watch: Path | None = None
) -> tuple[int, bool, float | None]:
    """(exit code, killed?, seconds until `watch` appeared) of `moelight fit argv` in a forked child,
    SIGKILLed `kill_after` seconds after the fork."""
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
    deadline = None if kill_after is None else start + kill_after
    appeared = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False, appeared
        if deadline is not None and time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -9, True, appeared
        if watch is not None and appeared is None and watch.exists():
            appeared = time.monotonic() - start
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


def run_chain(base: list[str], run: Path, rng: random.Random, kills: int, est: tuple[float, float, int]):
    """Kill `kills` runs of one chain at random moments, then resume to the end; returns its record."""
    startup_s, step_s, steps = est
    args = [*base, f"trainer.out_dir={run}"]
    log = run.with_suffix(".log")
    events = []
    for _ in range(kills):
        saved, _ = saved_steps(run)
        start = max(saved.values(), default=0)
        # The kill lands anywhere from start-up to the expected end of this run.
        delay = rng.uniform(0.0, startup_s + (steps - start) * step_s)
        code, killed, _ = fork_fit([*args, "--resume", "last"] if saved else args, log, kill_after=delay)
        after, torn = saved_steps(run)
        mid_save = any(run.glob("checkpoints/.*.partial*"))
        events.append(
            {"from_step": start, "delay_s": round(delay, 3), "killed": killed, "code": code}
            | {"mid_save": mid_save, "torn": torn, "saved_after": max(after.values(), default=0)}
        )
        if not killed:
            break
    saved, _ = saved_steps(run)
    final_from = max(saved.values(), default=0)
    mark = log.stat().st_size if log.exists() else 0
    final, _, _ = fork_fit([*args, "--resume", "last"] if saved else args, log)
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


def worker(w: int, a: argparse.Namespace, base: list[str], est: tuple[float, float, int]) -> None:
    """Chains until this worker's share of landed kills; results to worker<w>.json."""
    work = Path(a.work)
    target = a.kills // WORKERS + (w < a.kills % WORKERS)
    rng = random.Random(a.seed * 1000 + w)
    chains, landed = [], 0
    while landed < target and len(chains) < 4 * target:
        chain = run_chain(base, work / f"w{w}chain{len(chains)}", rng, min(a.per_chain, target - landed), est)
        landed += sum(e["killed"] for e in chain["events"])
        chains.append(chain)
    (work / f"worker{w}.json").write_text(json.dumps(chains))


def final_state(run: Path) -> dict:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {"step": ckpt["global_step"], "state": ckpt["state_dict"], "optim": ckpt["optimizer_states"]}


def same_state(got: dict, ref: dict) -> bool:
    """Bit-identical step, weights and AdamW state."""
    g, r = got["optim"][0]["state"], ref["optim"][0]["state"]
    return (
        got["step"] == ref["step"]
        and got["state"].keys() == ref["state"].keys()
        and all(torch.equal(got["state"][k], v) for k, v in ref["state"].items())
        and g.keys() == r.keys()
        and all(
            g[p].keys() == s.keys() and all(torch.equal(g[p][n], v) for n, v in s.items())
            for p, s in r.items()
        )
    )


def main_() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work")
    parser.add_argument("out")
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--per-chain", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=8)
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
    # A timed uninterrupted forked run: the reference, and the kill-delay scale.
    t1 = time.monotonic()
    first = work / "forked" / "checkpoints" / "step000001.ckpt"
    code, _, first_s = fork_fit(
        [*base, f"trainer.out_dir={work / 'forked'}"], work / "forked.log", watch=first
    )
    forked_s = time.monotonic() - t1
    assert code == 0 and first_s is not None, (work / "forked.log").read_text()[-3000:]
    step_s = (forked_s - first_s) / (a.steps - 1)
    est = (first_s - step_s, step_s, a.steps)  # start-up, one step (with its saves), steps
    pids = []
    for w in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            try:
                worker(w, a, base, est)
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
    ref = final_state(work / "fresh")
    chains = [c for w in range(WORKERS) for c in json.loads((work / f"worker{w}.json").read_text())]
    for c in chains:
        try:
            c["equal"] = c["done"] and same_state(final_state(work / c["run"]), ref)
        except Exception as exc:  # a missing or unreadable checkpoint is a failed chain
            c["equal"], c["error"] = False, repr(exc)[:300]
    summary = {
        "chains": chains,
        "forked_equals_fresh": same_state(final_state(work / "forked"), ref),
        "timing": {"warmup_s": warmup_s, "forked_run_s": forked_s, "chains_s": chains_s},
    }
    Path(a.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main_()
