"""Guarantees of an expert-parallel (P = 2) run under signals and lost ranks, checked on ranks
forked from a warmed-up process (tests/faults/ep_trials.py) so that many trials fit in a minute:

- SIGTERM / SIGINT to rank 0, rank 1 or both, at seeded random moments (aimed at the all2all,
  backward, expert-gradient sync, stop agreement, checkpoint save and other phases): both ranks
  exit 143 / 130 after saving one complete sharded `last.ckpt` at the step boundary where they
  stopped, and `--resume last` (itself signalled again) ends with exactly the uninterrupted run's
  weights and optimizer state;
- a stopped (SIGSTOP) or killed (SIGKILL) rank: the other exits 3 within the collective timeout
  with one message naming the lost rank, and `--resume last` ends with the uninterrupted weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

SIGNALS = int(os.environ.get("MOELIGHT_EP_SIGNALS", "20"))  # half SIGTERM, half SIGINT
MARGIN_S = 10  # shutdown after the collective timeout, on a loaded 2-core machine


@pytest.fixture(scope="module")
def trials(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("ep_trials")
    out = work / "result.json"
    env = {**os.environ, "MOELIGHT_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    script = Path(__file__).parent / "ep_trials.py"
    cmd = [sys.executable, str(script), str(work), str(out), "--signals", str(SIGNALS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    print(f"\nP=2 fault trials: timing {result['timing']}")
    return result


@pytest.mark.slow
def test_p2_sigterm_and_sigint_at_random_moments_save_on_every_rank_exit_and_resume_exactly(trials):
    """SIGTERM and SIGINT to any rank of a P = 2 run, at >= 10 random moments each: every time both
    ranks exit 143 / 130 with a complete sharded checkpoint at the step boundary where they stopped,
    and `--resume last` continues to exactly the uninterrupted run's final state."""
    sent = [t for t in trials["trials"] if t["signalled"]]
    landed = Counter(phase for t in sent for phase in t["landed"])
    kinds = Counter(t["signal"] for t in sent)
    ranks = Counter(str(t["rank"]) for t in sent)
    codes = Counter((t["signal"], tuple(t["codes"])) for t in sent)
    print(
        f"\n{len(sent)} signals ({dict(kinds)}) to ranks {dict(ranks)}, "
        f"{sum(t['resumed'] for t in sent)} of them to a resumed run; landed in {dict(landed)}; "
        f"exit codes {dict(codes)}; {len(trials['chains'])} chains"
    )
    assert trials["handlers_restored"], "a finished run left its signal handler installed"
    failed = [t for t in sent if not t["ok"]]
    assert not failed, failed[:3]
    assert kinds["SIGTERM"] >= SIGNALS // 2 and kinds["SIGINT"] >= SIGNALS // 2
    assert ranks["0"] and ranks["1"], "each rank alone must be signalled"
    for phase in ("all2all", "backward", "save", "start-up"):
        assert landed[phase], f"no signal landed in {phase}"
    assert any(t["resumed"] for t in sent), "no resumed run was signalled"
    unequal = [c for c in trials["chains"] if not c["equal"]]
    assert not unequal, unequal[:2]


@pytest.mark.slow
@pytest.mark.parametrize("how,state", [("SIGSTOP", "is stopped"), ("SIGKILL", "was killed")])
def test_p2_lost_rank_stops_the_other_within_the_timeout_naming_it_and_resume_continues(trials, how, state):
    """A P = 2 rank stopped (SIGSTOP) or killed (SIGKILL) mid-run: the other exits 3 within the
    recipe's collective timeout with one message naming the lost rank, and `--resume last` ends with
    exactly the uninterrupted run's final state."""
    t = trials[how]
    print(f"\n{how} to rank 1: rank 0 exited {t['rank0_code']} after {t['rank0_exit_s']} s: {t['message']}")
    assert t["reached_step"], f"the run ended before rank 1 could be sent {how}"
    assert t["rank0_code"] == 3
    assert t["rank0_exit_s"] < trials["timeout_s"] + MARGIN_S
    assert "lost rank 1" in t["message"] and state in t["message"]
    assert t["resume_codes"] == [0, 0] and t["equal"], t
