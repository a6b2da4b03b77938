"""Tests for classify/stats.py: Holm's correction on a worked example, bootstrap p-values, verdicts, the MDE."""
import math

import numpy as np
import pytest

from classify.stats import (MDE_FACTOR, bootstrap_p, holm, minimum_detectable_effect, verdict_from_interval,
                            verdict_from_p)
from data.errors import InputError


def test_holm_on_a_hand_worked_example():
    # sorted: 0.005 x 4 = 0.020; 0.010 x 3 = 0.030; 0.030 x 2 = 0.060; 0.040 x 1 = 0.040 -> raised to 0.060
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(holm(p) <= 0.05) == [True, False, False, True]  # Holm rejects the two smallest, stops at 0.03


def test_holm_caps_at_one_keeps_order_and_skips_nan():
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == pytest.approx([0.02])  # a family of one is uncorrected
    adjusted = holm([0.01, float("nan"), 0.02])  # m = 2: the NaN is not a test
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    rng = np.random.default_rng(0)
    p = rng.random(20)
    adjusted = holm(p)
    assert np.all(adjusted >= p) and np.all(np.diff(adjusted[np.argsort(p)]) >= 0)  # never below raw, monotone
    assert adjusted.min() == pytest.approx(min(1.0, 20 * p.min()))  # the smallest is Bonferroni's
    with pytest.raises(InputError, match="holm"):
        holm([0.1, 1.5])


def test_bootstrap_p_counts_the_tail_on_the_other_side_of_zero():
    assert bootstrap_p(np.zeros(99)) == 1.0  # identical arms: no evidence at all
    assert bootstrap_p(np.ones(99)) == pytest.approx(2 / 100)  # every replicate above 0: the floor 2 / (B + 1)
    reps = np.r_[-np.ones(4), np.ones(95)]
    assert bootstrap_p(reps) == pytest.approx(2 * 5 / 100)
    assert bootstrap_p(-reps) == bootstrap_p(reps)
    assert math.isnan(bootstrap_p([float("nan")]))


def test_verdicts_need_the_evidence_to_exclude_zero():
    assert verdict_from_interval(0.01, 0.2) == "helped" and verdict_from_interval(-0.2, -0.01) == "hurt"
    assert verdict_from_interval(-0.01, 0.2) == "inconclusive" and verdict_from_interval(0.0, 0.0) == "inconclusive"
    assert verdict_from_interval(float("nan"), 0.1) == "undetermined"
    assert verdict_from_p(0.1, 0.01) == "helped" and verdict_from_p(-0.1, 0.049) == "hurt"
    assert verdict_from_p(0.1, 0.05) == "inconclusive" and verdict_from_p(0.1, 0.2) == "inconclusive"


def test_minimum_detectable_effect_is_2_8_standard_errors():
    assert MDE_FACTOR == pytest.approx(2.8, abs=0.01)
    assert minimum_detectable_effect(0.02) == pytest.approx(MDE_FACTOR * 0.02)
    assert math.isnan(minimum_detectable_effect(float("nan")))
