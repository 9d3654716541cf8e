"""Signal, stop and kill the ranks of expert-parallel (P = 2) runs at seeded random moments; resume
each chain to the end and compare with an uninterrupted run. For tests/faults/test_ep_faults.py.

    python tests/faults/ep_trials.py WORK_DIR OUT.json --signals N --seed S --steps K

Both ranks of every run are forked from this process after one warm-up run in it, with the
environment a launcher gives them (LOCAL_RANK, WORLD_SIZE, MASTER_PORT), so Lightning starts no
process itself: a run costs its CLI parse, rendezvous and steps (2-5 s on this loaded 2-core
machine), not two Python, torch and Lightning start-ups (10-60 s each here). Each forked rank records on a shared board which
phase of the step it is in (all2all, backward, expert-gradient sync, the stop agreement, a save,
other forward/optimizer work) and its step, so a signal can be aimed at a phase and its landing
phase is known: read from the board the moment before the signal is sent.

A chain is a fresh run signalled (SIGTERM or SIGINT, to rank 0, rank 1 or both, once both ranks
have the guard's handler in: from `setup`, so start-up and restore count) at a random moment, then `--resume last` signalled again, and so on; then `--resume last`
to the end. After every signal: both ranks' exit codes, both ranks' "stopped by SIG at step N"
lines, the published `last.ckpt` (COMPLETE at step N, one shard per rank, every tensor loads, every
parameter's optimizer step equals N) and no `.partial` left. Then a SIGSTOP trial (rank 1 stopped:
rank 0 must stop within the collective timeout naming it) and a SIGKILL trial (the same for a
killed rank), each resumed to the end. Every chain's final weights and AdamW state must equal the
uninterrupted run's, bit for bit.
Writes {"trials": [...], "chains": [...], "SIGSTOP": {...}, "SIGKILL": {...}, "handlers_restored":
bool, "timing": {...}}; WORK_DIR/progress.log says when each run was started.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: no thread pool, forking stays safe

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import mmap  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from conftest import TINY  # noqa: E402
from lightning.fabric.plugins.environments.lightning import find_free_network_port  # noqa: E402

from faults.helpers import ROOT, same_state  # noqa: E402
from moelight.cli.main import main  # noqa: E402
from moelight.parallel import all_to_all  # noqa: E402
from moelight.parallel import strategy as ep_strategy  # noqa: E402
from moelight.parallel.checkpoint import write_consolidated  # noqa: E402
from moelight.training.run_dir import checkpoint_step  # noqa: E402
from moelight.training.signals import PreemptionGuard  # noqa: E402

WORLD = 2
CODES = {"SIGTERM": 143, "SIGINT": 130}
TIMEOUT_S = 4.0  # parallel.collective_timeout_s of every run: a lost rank is noticed this fast
AIM_S = 2.0  # a signal aimed at a phase not seen this long is sent anyway
HUNG_S = 90  # a run whose ranks are still alive this long after its signal is hung: a failure
PHASES = ["other", "forward/optimizer", "backward", "all2all", "grad-sync", "agree", "save"]
# "start-up": as soon as the handlers are in (restoring the checkpoint, before the first step).
AIMS = ["any", "all2all", "backward", "save", "agree", "grad-sync", "start-up", "forward/optimizer"]

# The board: per rank, its phase (a byte), whether the guard's handler is in (a byte) and its
# step (an int), shared with every forked rank.
SLOT = 8
BOARD = mmap.mmap(-1, SLOT * WORLD)


def phase_of(rank: int) -> str:
    return PHASES[BOARD[rank * SLOT]]


def landing(rank: int) -> str:
    """The rank's phase now; "start-up" outside any phase before this run's first step ended."""
    phase = phase_of(rank)
    return "start-up" if phase == "other" and step_of_rank(rank) == 0 else phase


def step_of_rank(rank: int) -> int:
    return struct.unpack_from("i", BOARD, rank * SLOT + 4)[0]


def instrument(rank: int) -> None:
    """In a forked rank: mark on the board the phase it is in (innermost wins) and its step."""
    base = rank * SLOT

    def phased(name: str, fn):
        code = PHASES.index(name)

        def wrapper(*args, **kwargs):
            before = BOARD[base]
            BOARD[base] = code
            try:
                return fn(*args, **kwargs)
            finally:
                BOARD[base] = before

        return wrapper

    def agree(self, trainer, *args):
        struct.pack_into("i", BOARD, base + 4, trainer.global_step)
        return agree_once(self, trainer, *args)

    def guard_setup(self, *args, **kwargs):
        guard_setup_once(self, *args, **kwargs)
        BOARD[base + 1] = 1

    guard_setup_once = PreemptionGuard.setup
    PreemptionGuard.setup = guard_setup
    agree_once = phased("agree", PreemptionGuard.on_train_batch_end)
    PreemptionGuard.on_train_batch_end = agree
    cls = ep_strategy.ExpertParallelStrategy
    cls.optimizer_step = phased("forward/optimizer", cls.optimizer_step)
    torch.autograd.backward = phased("backward", torch.autograd.backward)
    all_to_all._start = phased("all2all", all_to_all._start)
    all_to_all._finish = phased("all2all", all_to_all._finish)
    ep_strategy.reduce_expert_grads = phased("grad-sync", ep_strategy.reduce_expert_grads)
    ep_strategy.save_sharded = phased("save", ep_strategy.save_sharded)


def note(work: Path, text: str) -> None:
    """A time-stamped line in WORK/progress.log: where the seconds went."""
    with open(work / "progress.log", "a") as fh:
        fh.write(f"{time.strftime('%H:%M:%S')} {text}\n")


def fork_ranks(argv: list[str], log: Path) -> list[int]:
    """Start both ranks of `moelight fit argv` (forked, as a launcher would start them); their pids."""
    note(log.parent, f"fork {log.stem} {' '.join(a for a in argv if a.startswith('--'))}")
    port = str(find_free_network_port())
    BOARD[:] = bytes(SLOT * WORLD)  # no phase or step left from the previous run
    pids = []
    for rank in range(WORLD):
        pid = os.fork()
        if pid == 0:
            fd = os.open(f"{log}.rank{rank}", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(
                LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1"
            )
            os.environ["MASTER_PORT"] = port
            code = 1
            try:
                instrument(rank)
                code = main(["fit", *argv])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        pids.append(pid)
    return pids


def poll(pids: list[int], codes: dict[int, int]) -> bool:
    """Reap the ranks that ended into `codes` (pid -> exit code); True when all have."""
    for pid in pids:
        if pid not in codes:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[pid] = os.waitstatus_to_exitcode(status)
    return all(pid in codes for pid in pids)


def wait_all(
    pids: list[int], codes: dict[int, int] | None = None, limit_s: float = HUNG_S
) -> list[int | str]:
    """The ranks' exit codes (`codes`: those reaped already); "hung" for one still running after
    `limit_s` (then killed here)."""
    codes = {} if codes is None else codes
    deadline = time.monotonic() + limit_s
    while not poll(pids, codes) and time.monotonic() < deadline:
        time.sleep(0.005)
    hung = [p for p in pids if p not in codes]
    for pid in hung:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return ["hung" if p in hung else codes[p] for p in pids]


def guard_in(rank: int) -> bool:
    """Has `rank` installed the PreemptionGuard's handler (fit's setup)? Before that, `moelight
    fit`'s outside-the-loop handler exits at once (tests/test_signals.py); these trials are about
    the step-boundary stop."""
    return bool(BOARD[rank * SLOT + 1])


def wait_until(predicate, pids: list[int], codes: dict[int, int], limit_s: float) -> bool:
    """Poll `predicate` until it holds (True), a rank ends or `limit_s` passes (False)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if poll(pids, codes) or codes or time.monotonic() > deadline:
            return False
        time.sleep(0.0003)
    return True


def checkpoint_report(run: Path, work: Path) -> dict:
    """What `last.ckpt` of a run holds: step, shards, whether every tensor loads, optimizer steps."""
    last = run / "checkpoints" / "last.ckpt"
    report = {
        "shards": sorted(p.name for p in last.glob("*.distcp")),
        "partials": sorted(p.name for p in (run / "checkpoints").glob(".*partial*")),
    }
    try:
        report["step"] = json.loads((last / "COMPLETE").read_text())["step"]
        single = work / "consolidated.ckpt"
        write_consolidated(last, single)  # reads every tensor of every rank's shard
        ckpt = torch.load(single, map_location="cpu", weights_only=True)
        single.unlink()
        report["global_step"] = ckpt["global_step"]
        steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
        report["optimizer_steps"] = sorted(steps)
    except Exception as exc:  # incomplete or unloadable: the trial fails on it
        report["error"] = repr(exc)[:300]
    return report


def stopped_at(log: Path, mark: int, sig: str) -> int | None:
    """The step of this run's `stopped by SIG at step N` line in a rank's log, if it printed one."""
    text = " ".join(Path(f"{log}").read_bytes()[mark:].decode(errors="replace").split())
    found = re.findall(rf"stopped by {sig} at step (\d+)", text)
    return int(found[-1]) if found else None


def log_sizes(log: Path) -> list[int]:
    return [
        os.path.getsize(f"{log}.rank{r}") if os.path.exists(f"{log}.rank{r}") else 0 for r in range(WORLD)
    ]


def signal_run(argv: list[str], run: Path, rng: random.Random, plan: dict, steps: int, step_s: float) -> dict:
    """One run of a chain, signalled as `plan` says once its handlers are in; returns its record.
    Unaimed ("any"): at a uniformly random moment within about the rest of the run."""
    from_step = saved_step(run)
    log = run.with_suffix(".log")
    marks = log_sizes(log)
    t0 = time.monotonic()
    pids = fork_ranks(argv, log)
    codes: dict[int, int] = {}
    started = wait_until(lambda: all(guard_in(r) for r in range(WORLD)), pids, codes, HUNG_S)
    setup_s = time.monotonic() - t0
    targets = [0, 1] if plan["rank"] == "both" else [plan["rank"]]
    aim, landed, sent_at_step = plan["aim"], None, None
    if started:
        early = lambda: all(step_of_rank(r) < steps - 2 for r in range(WORLD))  # noqa: E731
        if aim == "start-up":
            pass
        elif aim == "any":
            wait_until(lambda: False, pids, codes, rng.uniform(0.0, (steps - from_step) * step_s))
        else:  # the aimed phase, or after AIM_S whatever phase the rank is in
            wait_until(lambda: phase_of(targets[0]) == aim or not early(), pids, codes, AIM_S)
        if not codes and early():
            landed = [landing(r) for r in targets]  # the moment before the signal is sent
            sent_at_step = [step_of_rank(r) for r in targets]
            for r in targets:
                os.kill(pids[r], getattr(signal, plan["signal"]))
    exit_codes = wait_all(pids, codes)
    record = dict(plan) | {
        "from_step": from_step,
        "signalled": landed is not None,
        "landed": landed,
        "sent_at_step": sent_at_step,
        "codes": exit_codes,
        "run_s": round(time.monotonic() - t0, 2),
        "setup_s": round(setup_s, 2),
        "stopped_at": [stopped_at(Path(f"{log}.rank{r}"), marks[r], plan["signal"]) for r in range(WORLD)],
    }
    if landed is not None:
        record["checkpoint"] = checkpoint_report(run, run.parent)
        record["ok"] = trial_ok(record)
    return record


def trial_ok(t: dict) -> bool:
    """Both ranks exited with the signal's code, said where they stopped (the same step), and
    `last.ckpt` is complete at that step: one shard per rank, every tensor loads, the optimizer
    stepped exactly that many times (a step boundary), nothing left half-written."""
    c, step = t["checkpoint"], t["stopped_at"][0]
    return (
        t["codes"] == [CODES[t["signal"]]] * WORLD
        and step is not None
        and t["stopped_at"] == [step] * WORLD
        and "error" not in c
        and c["step"] == c["global_step"] == step
        and c["optimizer_steps"] == [step]
        and c["shards"] == [f"__{r}_0.distcp" for r in range(WORLD)]
        and not c["partials"]
    )


def saved_step(run: Path) -> int:
    """The step of a run's `last.ckpt` (what `--resume last` takes here), 0 if none."""
    return checkpoint_step(run / "checkpoints" / "last.ckpt") or 0


def final_state(run: Path, work: Path) -> dict:
    single = work / f"{run.name}.final.ckpt"
    write_consolidated(run / "checkpoints" / "last.ckpt", single)
    ckpt = torch.load(single, map_location="cpu", weights_only=True)
    return {"step": ckpt["global_step"], "state": ckpt["state_dict"], "optim": ckpt["optimizer_states"]}


def finish(argv: list[str], run: Path) -> list[int]:
    """`--resume last` to the end, uninterrupted."""
    return wait_all(fork_ranks([*argv, "--resume", "last"], run.with_suffix(".log")))


def chain(
    base: list[str], run: Path, rng: random.Random, plans: list[dict], steps: int, step_s: float
) -> dict:
    argv = [*base, f"trainer.out_dir={run}"]
    trials = []
    for i, plan in enumerate(plans):
        if saved_step(run) >= steps - 3:
            break  # too near the end to be signalled before it
        record = signal_run([*argv, "--resume", "last"] if i else argv, run, rng, plan, steps, step_s)
        trials.append(record | {"resumed": i > 0})
        if not record["signalled"] or not record.get("ok"):
            break  # it ended first (or failed): the rest of the plan starts a new chain
    done = saved_step(run) == steps  # a run ended before its signal
    codes = [0] * WORLD if done else finish(argv, run)
    return {"run": run.name, "trials": trials, "final_codes": codes}


def lost_rank_trial(base: list[str], run: Path, how: str, steps: int) -> dict:
    """Stop (SIGSTOP) or kill (SIGKILL) rank 1 mid-run: rank 0 must stop within the collective
    timeout with exit 3 naming rank 1; then rank 1 is killed and `--resume last` runs to the end."""
    argv = [*base, f"trainer.out_dir={run}"]
    log = run.with_suffix(".log")
    pids = fork_ranks(argv, log)
    codes: dict[int, int] = {}
    first = run / "checkpoints" / "step000003.ckpt" / "COMPLETE"
    # Mid-step after the first checkpoint (step 3) is published: rank 1 past its save, not in one.
    in_step = lambda: first.exists() and step_of_rank(1) >= 4 and phase_of(1) != "save"  # noqa: E731
    reached = wait_until(in_step, pids, codes, HUNG_S)
    note(run.parent, f"{how} to rank 1 at step {step_of_rank(1)} in {phase_of(1)}")
    t0 = time.monotonic()
    if pids[1] not in codes:
        os.kill(pids[1], getattr(signal, how))
    code0 = wait_all(pids[:1], codes)[0]  # rank 1 is not reaped yet: a zombie, or stopped
    took = time.monotonic() - t0
    if pids[1] not in codes:
        os.kill(pids[1], signal.SIGKILL)  # a stopped rank is not coming back
    wait_all(pids[1:], codes)
    note(run.parent, f"rank 0 exited {code0} after {took:.1f} s")
    said = " ".join(Path(f"{log}.rank0").read_bytes().decode(errors="replace").split())
    resumed = finish(argv, run)
    return {
        "how": how,
        "reached_step": reached,
        "rank0_code": code0,
        "rank0_exit_s": round(took, 2),
        "message": (re.findall(r"rank 0: lost [^;]*", said) or [""])[-1],
        "resume_codes": resumed,
    }


def main_() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work")
    parser.add_argument("out")
    parser.add_argument("--signals", type=int, default=20, help="signals per kind is half of this")
    parser.add_argument("--per-chain", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=12)
    a = parser.parse_args()
    work = Path(a.work)
    base = [
        str(ROOT / "recipes" / "ep-cpu.yaml"),
        *[x for x in TINY if not x.startswith(("trainer.max_steps", "trainer.checkpoint_every"))],
        f"trainer.max_steps={a.steps}",
        "trainer.checkpoint_every_n_steps=3",
        "trainer.val_check_interval=1000",
        "trainer.logger=none",
        f"parallel.collective_timeout_s={TIMEOUT_S:g}",
    ]
    t0 = time.monotonic()
    single = [x for x in base[1:] if not x.startswith("parallel.")]
    with (
        open(work / "warmup.log", "w") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        assert main(["fit", *single, "trainer.max_steps=2", f"trainer.out_dir={work / 'warmup'}"]) == 0
    torch.set_num_threads(1)
    timing = {"warmup_s": time.monotonic() - t0}
    # The warm-up's handlers are gone (no stale one for the forked ranks to inherit).
    restored = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    t1 = time.monotonic()
    ref_run = work / "reference"
    codes = wait_all(fork_ranks([*base, f"trainer.out_dir={ref_run}"], ref_run.with_suffix(".log")))
    assert codes == [0, 0], f"the uninterrupted run exited {codes}; see {ref_run}.log.rank*"
    timing["reference_s"] = time.monotonic() - t1
    step_s = 0.7 * timing["reference_s"] / a.steps  # start-up included: unaimed signals land early
    reference = final_state(ref_run, work)

    rng = random.Random(a.seed)
    kinds = ["SIGTERM", "SIGINT"] * (a.signals // 2)
    t2 = time.monotonic()
    chains, landed, n = [], 0, 0
    while landed < len(kinds) and len(chains) < 3 * len(kinds):
        plans = [
            {"signal": kinds[(landed + i) % len(kinds)], "rank": rng.choice([0, 1, 1, "both"])}
            | {"aim": AIMS[(n + i) % len(AIMS)]}
            for i in range(min(a.per_chain, len(kinds) - landed))
        ]
        n += len(plans)
        c = chain(base, work / f"chain{len(chains)}", rng, plans, a.steps, step_s)
        try:
            c["equal"] = c["final_codes"] == [0, 0] and same_state(
                final_state(work / c["run"], work), reference
            )
        except Exception as exc:
            c["equal"], c["error"] = False, repr(exc)[:300]
        landed += sum(t["signalled"] for t in c["trials"])
        chains.append(c)
    timing["chains_s"] = time.monotonic() - t2
    t3 = time.monotonic()
    lost = {how: lost_rank_trial(base, work / how, how, a.steps) for how in ("SIGSTOP", "SIGKILL")}
    for how, record in lost.items():
        try:
            record["equal"] = same_state(final_state(work / how, work), reference)
        except Exception as exc:
            record["equal"], record["error"] = False, repr(exc)[:300]
    timing["lost_rank_s"] = time.monotonic() - t3
    summary = {
        "steps": a.steps,
        "timeout_s": TIMEOUT_S,
        "handlers_restored": restored,
        "chains": chains,
        "trials": [t for c in chains for t in c["trials"]],
        **lost,
        "timing": {k: round(v, 1) for k, v in timing.items()},
    }
    Path(a.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main_()
