"""Collaboration math and profile loading, checked against the C2R paper's released data."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from moelight.c2r.collaboration import (
    coactivation_counts,
    collaborators_from_counts,
    concentration,
    is_collaborator_list,
    load_collaboration,
)
from moelight.errors import ConfigError


def test_lists_from_base_counts_agree_with_released_lists(c2r_data):
    """What is compared: rows whose 7 off-diagonal counts are all distinct (no tie to break).

    The released lists were profiled on another sample than these counts (README: equal to
    argsort(-C_base) on 93% of entries), so small, noisy counts near the end of a row may swap.
    We require: every list ends with the expert itself, >= 90% of entries equal, >= 95% of
    first collaborators equal, and >= 90% of the top-3 sets equal.
    """
    counts = torch.from_numpy(np.load(c2r_data / "llama_moe_base_collaboration.npy"))
    released = torch.from_numpy(
        np.load(c2r_data / "llama_moe_3.5b_2of8_collaborative_list.npy").astype(np.int64)
    )
    ours = collaborators_from_counts(counts)
    assert ours.shape == (32, 8, 8) and ours.dtype == torch.long
    assert is_collaborator_list(ours)
    assert torch.equal(ours[..., -1], torch.arange(8).expand(32, 8))

    no_tie = torch.zeros(32, 8, dtype=torch.bool)
    for layer, i in itertools.product(range(32), range(8)):
        off_diagonal = [int(c) for j, c in enumerate(counts[layer, i]) if j != i]
        no_tie[layer, i] = len(set(off_diagonal)) == 7
    assert no_tie.sum() >= 240  # 251 of 256 rows here: the comparison covers almost everything

    entries = (ours == released)[no_tie].float().mean()
    first = (ours[..., 0] == released[..., 0])[no_tie].float().mean()
    top3 = (ours[..., :3].sort(-1).values == released[..., :3].sort(-1).values).all(-1)[no_tie].float().mean()
    assert entries >= 0.90, entries
    assert first >= 0.95, first
    assert top3 >= 0.90, top3


def test_collaborators_from_counts_by_hand():
    counts = torch.tensor([[0, 5, 5, 1], [5, 0, 2, 9], [5, 2, 0, 2], [1, 9, 2, 0]])
    expected = [
        [1, 2, 3, 0],  # 1 and 2 tie at 5: the lower id first
        [3, 0, 2, 1],
        [0, 1, 3, 2],  # 1 and 3 tie at 2
        [1, 2, 0, 3],
    ]
    assert collaborators_from_counts(counts).tolist() == expected
    # A large diagonal is ignored: the expert itself is always last.
    assert collaborators_from_counts(counts + 100 * torch.eye(4, dtype=torch.long)).tolist() == expected


def test_is_collaborator_list():
    assert is_collaborator_list(np.array([[1, 0], [0, 1]]))
    assert is_collaborator_list(torch.tensor([[[2, 1, 0], [0, 2, 1], [1, 0, 2]]]))
    assert not is_collaborator_list(np.array([[1, 1], [0, 1]]))
    assert not is_collaborator_list(np.array([[0, 3], [3, 0]]))  # counts
    assert not is_collaborator_list(np.array([0, 1]))
    assert not is_collaborator_list(np.zeros((2, 3), dtype=int))


def test_coactivation_counts_equal_brute_force():
    torch.manual_seed(0)
    e, k, t = 10, 3, 200
    experts = torch.stack([torch.randperm(e)[:k] for _ in range(t)])
    brute = torch.zeros(e, e, dtype=torch.long)
    for row in experts.tolist():
        for i in range(e):
            for j in range(e):
                if i != j and i in row and j in row:
                    brute[i, j] += 1
    counts = coactivation_counts(experts, e)
    assert torch.equal(counts, brute)
    assert counts.dtype == torch.long
    # Each token adds k*(k-1) ordered pairs.
    assert int(counts.sum()) == t * k * (k - 1)


def test_concentration_matches_the_readme(c2r_data):
    # README: the top-1 share is 0.52 in the base model and 0.91 after C2R fine-tuning at T = 1.
    base = np.load(c2r_data / "llama_moe_base_collaboration.npy")
    tuned = np.load(c2r_data / "llama_moe_topt_1_collaboration.npy")
    assert concentration(torch.from_numpy(base), 1) == pytest.approx(0.52, abs=0.01)
    assert concentration(torch.from_numpy(tuned), 1) == pytest.approx(0.91, abs=0.01)
    assert concentration(torch.from_numpy(base), 7) == pytest.approx(1.0)


def test_concentration_by_hand():
    counts = torch.tensor([[0.0, 3, 1], [3, 0, 0], [1, 0, 0]])
    # Expert 0: 3/4; expert 1: 3/3; expert 2: 1/1.
    assert concentration(counts, 1) == pytest.approx((0.75 + 1 + 1) / 3)
    assert concentration(torch.zeros(3, 3), 1) == 0.0


# --- load_collaboration ----------------------------------------------------------------------------


def test_load_released_lists_and_counts(c2r_data):
    lists, counts = load_collaboration(str(c2r_data / "llama_moe_3.5b_2of8_collaborative_list.npy"), 32, 8)
    assert counts is None
    assert lists.dtype == torch.long and lists.shape == (32, 8, 8)
    lists2, counts2 = load_collaboration(str(c2r_data / "llama_moe_base_collaboration.npy"), 32, 8)
    assert counts2 is not None and counts2.shape == (32, 8, 8)
    raw = np.load(c2r_data / "llama_moe_base_collaboration.npy")
    assert torch.equal(counts2, torch.from_numpy(raw).float())
    assert torch.equal(lists2, collaborators_from_counts(torch.from_numpy(raw)))
    qwen, _ = load_collaboration(str(c2r_data / "qwen1.5_moe_a2.7b_collaborative_list.npy"), 24, 60)
    assert qwen.shape == (24, 60, 60)


def test_load_json_and_broadcast(tmp_path):
    counts = [[0, 4, 1], [4, 0, 7], [1, 7, 0]]
    path = tmp_path / "counts.json"
    path.write_text(json.dumps(counts))
    lists, got_counts = load_collaboration(str(path), 5, 3)
    assert lists.shape == (5, 3, 3)
    assert lists[4].tolist() == [[1, 2, 0], [2, 0, 1], [1, 0, 2]]
    assert torch.equal(got_counts[2], torch.tensor(counts, dtype=torch.float32))

    path = tmp_path / "lists.json"
    path.write_text(json.dumps({"collaborators": [[[1, 2, 0], [2, 0, 1], [1, 0, 2]]] * 2}))
    lists, got_counts = load_collaboration(str(path), 2, 3)
    assert got_counts is None and lists[1].tolist() == [[1, 2, 0], [2, 0, 1], [1, 0, 2]]

    npy = tmp_path / "one_layer.npy"
    np.save(npy, np.array(counts))
    lists, _ = load_collaboration(str(npy), 3, 3)
    assert lists.shape == (3, 3, 3)


def test_load_errors(tmp_path, c2r_data):
    def error(path, layers=32, experts=8) -> ConfigError:
        with pytest.raises(ConfigError) as info:
            load_collaboration(str(path), layers, experts)
        assert info.value.field == "profile.path"
        return info.value

    missing = tmp_path / "nope.npy"
    assert str(missing) in error(missing).message and "not found" in error(missing).message

    base = c2r_data / "llama_moe_base_collaboration.npy"
    msg = error(base, experts=16).message
    assert "expected 16 experts" in msg and "got 8" in msg
    msg = error(base, layers=24).message
    assert "expected 24 MoE layers" in msg and "got 32" in msg

    bad_json = tmp_path / "broken.json"
    bad_json.write_text("[[1, 2,")
    assert "cannot read" in error(bad_json).message

    ragged = tmp_path / "ragged.json"
    ragged.write_text("[[1, 2], [3]]")
    error(ragged)

    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not a numpy file")
    assert "cannot read" in error(garbage).message

    txt = tmp_path / "counts.txt"
    txt.write_text("0 1\n1 0\n")
    assert "unknown profile file type" in error(txt).message

    vec = tmp_path / "vector.npy"
    np.save(vec, np.arange(8))
    assert "expected shape" in error(vec).message

    negative = tmp_path / "negative.npy"
    np.save(negative, -np.ones((8, 8)))
    error(negative)
