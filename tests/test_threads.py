"""The CPU thread default: the cores other work leaves idle, at least one; OMP_NUM_THREADS wins."""

from __future__ import annotations

import pytest
import torch

from moelight.training import threads
from moelight.training.threads import choose_threads, idle_cores


@pytest.mark.parametrize(
    "cores, load, expected",
    [(2, 0.05, 2), (2, 0.9, 1), (2, 20.0, 1), (16, 3.2, 13), (16, 0.0, 16), (1, 0.0, 1)],
)
def test_idle_cores(cores, load, expected):
    assert idle_cores(cores, load) == expected


def test_a_busy_machine_gets_one_thread(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (40.0, 40.0, 40.0))
    monkeypatch.setattr(threads.torch.cuda, "is_available", lambda: False)  # a CPU run
    try:
        assert choose_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_omp_num_threads_wins(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (40.0, 40.0, 40.0))
    assert choose_threads() == before and torch.get_num_threads() == before
