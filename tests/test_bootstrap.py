"""Tests for classify/bootstrap.py: subject-level percentile intervals and mean/std over seeds."""
import math
import time

import numpy as np
import pandas as pd
import pytest

from classify.bootstrap import bootstrap_ci, mean_std_over_seeds
from classify.fairness import auroc
from data.errors import InputError


def accuracy(y_true, y_pred, y_score, groups):
    return float(np.mean(y_true == y_pred))


def _synthetic(n, p_correct=0.8, seed=0):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    y_pred = np.where(rng.random(n) < p_correct, y_true, 1 - y_true)
    return y_true, y_pred, rng.random(n)


def test_interval_contains_point_and_narrows_with_more_data():
    widths = []
    for n in (50, 2000):
        y_true, y_pred, y_score = _synthetic(n)
        point, lo, hi = bootstrap_ci(accuracy, y_true, y_pred, y_score, None, np.arange(n), n_boot=300, seed=1)
        assert lo <= point <= hi and point == pytest.approx(np.mean(y_true == y_pred))
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # width ~ 1/sqrt(n): expected ratio sqrt(40) ~ 6


def test_width_matches_normal_approximation_of_a_proportion():
    y_true, y_pred, y_score = _synthetic(2000)
    point, lo, hi = bootstrap_ci(accuracy, y_true, y_pred, y_score, None, np.arange(2000), n_boot=400, seed=0)
    expected = 2 * 1.96 * math.sqrt(point * (1 - point) / 2000)
    assert hi - lo == pytest.approx(expected, rel=0.2)


def test_resamples_subjects_not_rows():
    # every subject has 3 identical rows: a subject bootstrap gives exactly the one-row-per-subject interval,
    # a row bootstrap (ids = rows) would be narrower by about sqrt(3)
    y_true, y_pred, y_score = _synthetic(100)
    single = bootstrap_ci(accuracy, y_true, y_pred, y_score, None, np.arange(100), n_boot=200, seed=3)
    ids = np.repeat(np.arange(100), 3)
    rep = lambda a: np.repeat(a, 3)
    tripled = bootstrap_ci(accuracy, rep(y_true), rep(y_pred), rep(y_score), None, ids, n_boot=200, seed=3)
    assert tripled == pytest.approx(single)
    by_row = bootstrap_ci(accuracy, rep(y_true), rep(y_pred), rep(y_score), None, np.arange(300), n_boot=200, seed=3)
    assert by_row[2] - by_row[1] < 0.8 * (single[2] - single[1])


def test_groups_follow_their_rows_and_nan_replicates_are_dropped():
    y_true, y_pred, y_score = _synthetic(40)
    groups = pd.DataFrame({"sex": np.where(np.arange(40) < 20, "female", "male")})
    y_true[:20] = 1  # make female accuracy computable only from female rows

    def female_accuracy(t, p, s, g):
        female = (g["sex"] == "female").to_numpy()
        return float(np.mean(t[female] == p[female])) if female.any() else float("nan")

    point, lo, hi = bootstrap_ci(female_accuracy, y_true, y_pred, y_score, groups, np.arange(40), n_boot=200)
    assert point == pytest.approx(np.mean(y_true[:20] == y_pred[:20])) and lo <= point <= hi
    # AUROC of a one-positive sample: resamples that miss the positive are NaN and skipped
    t = np.array([1] + [0] * 9)
    point, lo, hi = bootstrap_ci(lambda a, b, c, d: auroc(a, b, c), t, t, np.linspace(1, 0, 10), None, None,
                                 n_boot=100)
    assert point == 1.0 and lo == 1.0 and hi == 1.0


def test_deterministic_for_a_seed_and_fast():
    y_true, y_pred, y_score = _synthetic(300)
    start = time.perf_counter()
    first = bootstrap_ci(accuracy, y_true, y_pred, y_score, None, np.arange(300), n_boot=500, seed=7)
    assert time.perf_counter() - start < 5.0
    assert bootstrap_ci(accuracy, y_true, y_pred, y_score, None, np.arange(300), n_boot=500, seed=7) == first
    assert bootstrap_ci(accuracy, y_true, y_pred, y_score, None, np.arange(300), n_boot=500, seed=8) != first


def test_mean_std_over_seeds():
    assert mean_std_over_seeds([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))  # sample std, ddof=1
    mean, std = mean_std_over_seeds([0.7])
    assert mean == 0.7 and math.isnan(std)
    with pytest.raises(InputError):
        mean_std_over_seeds([])


def test_bad_inputs_raise_input_error():
    y_true, y_pred, y_score = _synthetic(10)
    with pytest.raises(InputError, match="subject_ids"):
        bootstrap_ci(accuracy, y_true, y_pred, y_score, None, np.arange(9))
    with pytest.raises(InputError, match="alpha"):
        bootstrap_ci(accuracy, y_true, y_pred, y_score, None, np.arange(10), alpha=1.5)
