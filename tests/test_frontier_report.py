"""benchmarks/frontier_report.py: the Pareto frontier, the goal verdicts and the report, on a made-up record."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import pytest  # noqa: E402
from frontier_report import goal, pareto, recommend, write_report  # noqa: E402


def arm(family: str, losses: list[float], top: list[float], dev2, dev4, placement="own") -> dict:
    seeds = [str(s) for s in range(len(losses))]
    deltas = {s: a - b for s, a, b in zip(seeds, losses, top, strict=True)}
    return {
        "family": family,
        "router": {"name": family},
        "devices": None,
        "placement": placement,
        "mean": {"val_loss": sum(losses) / len(losses), "load_cv": 0.2},
        "per_seed": {s: {"val_loss": v} for s, v in zip(seeds, losses, strict=True)},
        "delta_vs_topk": deltas,
        "mean_delta": sum(deltas.values()) / len(deltas),
        "dev_per_token": {"2": dev2, "4": dev4},
    }


TOP = [2.000, 2.004, 2.002]  # seed spread 0.004


def record() -> dict:
    arms = {
        "top-k": arm("top-k", TOP, TOP, 1.35, 1.64),
        "C2R T=1": arm("C2R", [2.010, 2.014, 2.012], TOP, 1.06, 1.24),  # +0.010: outside the spread
        "C2R T=3": arm("C2R", [2.002, 2.006, 2.004], TOP, 1.26, 1.24),  # +0.002: inside, 1.24 devices
        "C2R placement P=4": arm("C2R placement", [2.003, 2.007, 2.005], TOP, None, 1.0, "base"),
        "device-limited M=2/P=4": arm("device-limited", [1.999, 2.003, 2.001], TOP, None, 1.8, "contiguous"),
    }
    return {
        "command": "python benchmarks/frontier.py",
        "recipe": "recipes/frontier.yaml",
        "base_steps": 1,
        "steps": 1,
        "lr": 1e-3,
        "seeds": [0, 1, 2],
        "validation_tokens": 10,
        "base": {"val_loss": 2.1, "load_cv": 0.3, "dev_p2_own": 1.3, "dev_p4_own": 1.6},
        "wall_s": 60.0,
        "cpu": "2 logical CPUs",
        "arms": arms,
    }


def test_pareto_keeps_points_nothing_beats():
    pts = [(1.64, 2.002, "a"), (1.24, 2.004, "b"), (1.0, 2.005, "c"), (1.8, 2.001, "d"), (1.3, 2.01, "e")]
    assert [n for _, _, n in pareto(pts)] == ["c", "b", "a", "d"]


def test_goal_names_each_miss_and_by_how_much():
    text = goal(record())
    assert "C2R T=3: **meets the goal**" in text
    assert "C2R placement P=4: **meets the goal**" in text
    assert "C2R T=1: misses" in text and "exceeds top-k's seed spread 0.0040 by 0.0060" in text
    assert "device-limited" not in text  # the goal is about C2R routers


def test_recommendations_follow_the_rules():
    text = recommend(record(), 4)
    fast, mid, slow = text.splitlines()
    assert "**device-limited M=2/P=4**" in fast  # better than top-k on every seed
    assert "**C2R placement P=4**" in mid  # fewest devices within the spread
    assert "**C2R placement P=4**" in slow


@pytest.mark.slow
def test_report_writes_page_and_plots(tmp_path):
    page = write_report(record(), tmp_path)
    assert (tmp_path / "frontier-p4.png").stat().st_size > 0 and (tmp_path / "frontier-p2.png").is_file()
    assert "| C2R T=1 | name=C2R | 2.0120 | +0.0100, +0.0100, +0.0100 | +0.0100 |" in page.read_text()
