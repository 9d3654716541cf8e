"""Placement and profile files are read once per process while unchanged (fit builds its layers 3 times)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from moelight.c2r import collaboration, placement
from moelight.c2r.collaboration import load_collaboration
from moelight.c2r.placement import load_placement, save_placement
from moelight.errors import ConfigError


def test_a_placement_file_is_read_once_until_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    save_placement(path, torch.tensor([[0, 0, 1, 1], [1, 0, 1, 0]]))
    reads = []
    real = placement.json.loads
    monkeypatch.setattr(placement.json, "loads", lambda text: reads.append(1) or real(text))
    first = load_placement(str(path), 2, 4, 2)
    first[0, 0] = 7  # a caller's change must not reach the next caller
    second = load_placement(str(path), 2, 4, 2)
    assert len(reads) == 1 and second.tolist() == [[0, 0, 1, 1], [1, 0, 1, 0]]
    save_placement(path, torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]]))
    os.utime(path, ns=(1, 1))  # a different mtime even where the clock is coarse
    assert load_placement(str(path), 2, 4, 2).tolist()[0] == [1, 1, 0, 0] and len(reads) == 2


def test_a_profile_is_read_once_and_errors_are_not_cached(tmp_path, monkeypatch):
    path = tmp_path / "lists.npy"
    lists = np.stack([np.roll(np.arange(4), -i) for i in range(4)])[:, [1, 2, 3, 0]]
    np.save(path, lists)
    reads = []
    real = collaboration.np.load
    monkeypatch.setattr(collaboration.np, "load", lambda *a, **k: reads.append(1) or real(*a, **k))
    a, _ = load_collaboration(str(path), 1, 4)
    b, _ = load_collaboration(str(path), 1, 4)
    assert len(reads) == 1 and torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    missing = str(tmp_path / "none.npy")
    for _ in range(2):  # refused each time: nothing cached
        with pytest.raises(ConfigError, match="not found"):
            load_collaboration(missing, 1, 4)
