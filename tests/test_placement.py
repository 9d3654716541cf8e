"""Collaboration-aware placement (moelight/c2r/partition.py), on the C2R paper's LLaMA-MoE counts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from moelight.c2r.collaboration import concentration
from moelight.c2r.partition import (
    expected_devices_per_token,
    kept_share,
    num_balanced_partitions,
    optimize_placement,
)
from moelight.c2r.placement import contiguous_placement, load_placement, save_placement
from moelight.c2r.profiling import Profile, concentration_curve, specialization
from moelight.errors import MoelightError


def llama(c2r_data, name: str) -> torch.Tensor:
    return torch.from_numpy(np.load(c2r_data / f"llama_moe_{name}_collaboration.npy"))


def brute_force_best(counts: torch.Tensor, num_devices: int) -> torch.Tensor:
    """Per layer, the best kept share over every balanced labelling (independent of partition.py)."""
    e = counts.shape[-1]
    labels = np.array(list(itertools.product(range(num_devices), repeat=e)))
    balanced = (np.stack([(labels == d).sum(1) for d in range(num_devices)], 1) == e // num_devices).all(1)
    labels = labels[balanced]
    same = torch.from_numpy(labels[:, :, None] == labels[:, None, :]).double()  # [N, E, E]
    c = counts.double().clone()
    c.diagonal(dim1=-2, dim2=-1).zero_()
    kept = torch.einsum("nij,lij->ln", same, c)  # [L, N]
    return kept.max(1).values / c.sum((-2, -1))


def pair_histogram(counts: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """With 2 experts per token, the co-activation counts ARE the routing histogram: C[i, j] tokens
    went to exactly {i, j}."""
    e = counts.shape[-1]
    pairs = torch.tensor([[i, j] for i in range(e) for j in range(i + 1, e)])
    return [pairs] * counts.shape[0], [layer[pairs[:, 0], pairs[:, 1]] for layer in counts]


@pytest.mark.parametrize("num_devices", [2, 4])
def test_placement_keeps_more_coactivation_than_contiguous(c2r_data, num_devices):
    counts = llama(c2r_data, "base")
    placement = optimize_placement(counts, num_devices)
    assert placement.shape == (32, 8)
    for layer in placement:  # equal groups
        assert torch.bincount(layer, minlength=num_devices).tolist() == [8 // num_devices] * num_devices
    ours = kept_share(counts, placement)
    contiguous = kept_share(counts, contiguous_placement(32, 8, num_devices))
    best = brute_force_best(counts, num_devices)
    torch.testing.assert_close(ours, best, rtol=0, atol=1e-12)  # 8 experts: the exact optimum
    # Strictly better in every layer, except where contiguous is itself optimal: on 2 devices,
    # layer 12 of the base model happens to be best split {0-3}, {4-7} (checked by brute force).
    contiguous_optimal = (best - contiguous).abs() < 1e-12
    assert (ours > contiguous)[~contiguous_optimal].all()
    assert contiguous_optimal.nonzero().flatten().tolist() == ([12] if num_devices == 2 else [])
    assert float(ours.mean()) > float(contiguous.mean()) + 0.25

    # Fewer devices per token, exactly: with k = 2 a token visits 2 - [same device] devices.
    sets, set_counts = pair_histogram(counts)
    dev = expected_devices_per_token(sets, set_counts, placement)
    dev0 = expected_devices_per_token(sets, set_counts, contiguous_placement(32, 8, num_devices))
    torch.testing.assert_close(dev, 2 - ours)
    torch.testing.assert_close(dev0, 2 - contiguous)
    assert (dev <= dev0 + 1e-12).all() and float(dev.mean()) < float(dev0.mean())


@pytest.mark.parametrize("num_devices", [2, 4])
def test_heuristic_is_near_the_exact_optimum(c2r_data, num_devices):
    """Greedy + Kernighan-Lin alone (exact search off) on 7 matrices x 32 layers."""
    ratios = []
    for name in ["base"] + [f"topt_{t}" for t in range(1, 7)]:
        counts = llama(c2r_data, name)
        exact = kept_share(counts, optimize_placement(counts, num_devices))
        heuristic = kept_share(counts, optimize_placement(counts, num_devices, exact_limit=0))
        assert (heuristic <= exact + 1e-12).all()
        ratios.append(heuristic / exact)
    ratios = torch.cat(ratios)
    assert float(ratios.min()) > 0.9
    assert float((ratios > 1 - 1e-12).double().mean()) > 0.97


def test_partitioner_recovers_planted_blocks():
    gen = torch.Generator().manual_seed(0)
    for num_experts, num_devices in [(8, 4), (12, 3), (16, 4), (32, 4)]:
        per = num_experts // num_devices
        block = torch.randperm(num_experts, generator=gen) // per  # a hidden grouping
        same = block[:, None] == block[None, :]
        # Strong collaboration inside blocks, weak and noisy across.
        counts = torch.where(same, 100, 8) + torch.randint(0, 10, (num_experts, num_experts), generator=gen)
        counts = counts + counts.T
        counts.fill_diagonal_(0)
        for limit in (0, 20_000):  # heuristic and (where small enough) exact search
            found = optimize_placement(counts, num_devices, exact_limit=limit)[0]
            groups = {frozenset((found == d).nonzero().flatten().tolist()) for d in range(num_devices)}
            planted = {frozenset((block == d).nonzero().flatten().tolist()) for d in range(num_devices)}
            assert groups == planted, (num_experts, num_devices, limit)


def test_trivial_and_bad_device_counts():
    counts = torch.randint(0, 50, (8, 8))
    assert optimize_placement(counts, 1).tolist() == [[0] * 8]
    assert sorted(optimize_placement(counts, 8)[0].tolist()) == list(range(8))
    with pytest.raises(MoelightError, match="cannot place 8 experts on 3 devices"):
        optimize_placement(counts, 3)
    assert num_balanced_partitions(8, 2) == 35 and num_balanced_partitions(8, 4) == 105


def test_concentration_of_c2r_finetuned_counts_exceeds_base(c2r_data):
    base, tuned = llama(c2r_data, "base"), llama(c2r_data, "topt_1")
    curve_base, curve_tuned = concentration_curve(base), concentration_curve(tuned)  # [32, 7]
    assert curve_base.shape == (32, 7)
    for t in range(1, 8):  # the curve is collaboration.concentration at every T
        assert float(curve_base[:, t - 1].mean()) == pytest.approx(concentration(base, t))
    mean_base, mean_tuned = curve_base.mean(0), curve_tuned.mean(0)
    assert (mean_tuned[:6] > mean_base[:6]).all()  # T = 7 holds everything in both
    assert float(mean_tuned[0]) == pytest.approx(0.91, abs=0.01) and float(mean_base[0]) == pytest.approx(
        0.52, abs=0.01
    )
    assert (curve_tuned[:, 0] > curve_base[:, 0]).double().mean() > 0.9  # per layer, almost always
    assert float(specialization(tuned).nanmean()) > float(specialization(base).nanmean()) + 0.2


def test_specialization_by_hand():
    counts = torch.tensor([[0.0, 5, 0, 0], [5, 0, 5, 5], [0, 5, 0, 0], [0, 5, 0, 0]])
    spec = specialization(counts)
    # Experts 0, 2, 3 collaborate with one expert only; expert 1 evenly with all three.
    torch.testing.assert_close(spec, torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64))
    assert torch.isnan(specialization(torch.zeros(3, 3))).all()


def test_expected_devices_per_token_equals_per_token_count():
    gen = torch.Generator().manual_seed(3)
    e, k, layers, tokens = 8, 3, 2, 500
    routings = [
        torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(tokens)]) for _ in range(layers)
    ]
    placement = torch.stack([torch.randperm(e, generator=gen) // 2 for _ in range(layers)])  # 4 devices
    profile = Profile(layers, e, k)
    for layer, r in enumerate(routings):
        for chunk in r.split(64):  # batches of any size add up to the same histogram
            profile.add(layer, chunk)
    sets, set_counts = profile.expert_sets()
    got = expected_devices_per_token(list(sets), list(set_counts), placement)
    brute = [
        sum(len({int(placement[layer, x]) for x in row}) for row in routings[layer].tolist()) / tokens
        for layer in range(layers)
    ]
    torch.testing.assert_close(got, torch.tensor(brute, dtype=torch.float64))


def test_placement_file_round_trip(tmp_path, c2r_data):
    counts = llama(c2r_data, "base")[:4]
    placement = optimize_placement(counts, 4)
    path = tmp_path / "placement-4.json"
    save_placement(path, placement, method="test")
    assert torch.equal(load_placement(str(path), 4, 8, 4), placement)
