"""Time-to-quality arithmetic against hand-computed crossings."""

from __future__ import annotations

import pytest

from moelight.bench.time_to_quality import crossing_step, spread, time_to_target
from moelight.errors import MoelightError

STEPS = [50, 100, 150, 200]
LOSSES = [1.50, 1.46, 1.43, 1.42]


def test_crossing_interpolates_between_evaluations():
    # 1.44 lies between 1.46 (step 100) and 1.43 (step 150): 100 + (1.46 - 1.44) / 0.03 * 50
    assert crossing_step(STEPS, LOSSES, 1.44) == pytest.approx(100 + 0.02 / 0.03 * 50)
    # exactly on a point: that point's step
    assert crossing_step(STEPS, LOSSES, 1.43) == pytest.approx(150)
    # emulated seconds = step x step time
    assert time_to_target(STEPS, LOSSES, 1.44, 250.0) == pytest.approx((100 + 0.02 / 0.03 * 50) * 0.25)


def test_first_crossing_wins_when_the_curve_goes_back_up():
    assert crossing_step([10, 20, 30, 40], [2.0, 1.0, 3.0, 0.5], 1.5) == pytest.approx(15)


def test_already_below_at_the_first_point_and_not_reached():
    assert crossing_step(STEPS, LOSSES, 1.6) == 50
    assert crossing_step(STEPS, LOSSES, 1.41) is None
    assert time_to_target(STEPS, LOSSES, 1.41, 100.0) is None


def test_spread_counts_not_reached():
    assert spread([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "reached": 3, "of": 4}
    assert spread([None])["reached"] == 0


def test_bad_curves_are_errors():
    with pytest.raises(MoelightError):
        crossing_step([1, 1], [1.0, 0.5], 0.7)
    with pytest.raises(MoelightError):
        crossing_step([1, 2], [1.0], 0.7)
