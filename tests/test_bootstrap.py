"""Tests for classify/bootstrap.py: subject-level and hierarchical (subjects, seeds, generators) percentile
intervals, and mean/std over seeds."""
import math
import time

import numpy as np
import pandas as pd
import pytest

from classify.bootstrap import (LEVEL_SETS, bootstrap_ci, hierarchical_bootstrap, mean_std_over_seeds,
                                percentile_interval)
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


# hierarchical_bootstrap: accuracy per prediction column, rows counted with the bootstrap weights
def weighted_accuracy(y_true):
    def metric(weights, y_pred):
        return ((weights * (y_true == 1))[:, None] * (y_pred == 1) + (weights * (y_true == 0))[:, None]
                * (y_pred == 0)).sum(0, keepdims=True) / weights.sum()
    return metric


def _runs(y_true, p_correct, rng) -> np.ndarray:
    """(N, G, S) predictions, run (g, s) correct with probability p_correct[g, s]."""
    p_correct = np.asarray(p_correct, dtype=float)
    hit = rng.random((len(y_true),) + p_correct.shape) < p_correct
    return np.where(hit, y_true[:, None, None], 1 - y_true[:, None, None])


def test_identical_arms_give_a_gain_interval_of_exactly_zero():
    y_true, _, _ = _synthetic(60)
    preds = _runs(y_true, np.full((3, 4), 0.7), np.random.default_rng(0))
    point, reps = hierarchical_bootstrap(weighted_accuracy(y_true), {"a": preds, "b": preds.copy()},
                                         np.arange(60) // 2, n_boot=200)
    for name in LEVEL_SETS:
        gain = reps[name]["a"] - reps[name]["b"]
        assert np.all(gain == 0) and percentile_interval(gain) == (0.0, 0.0)
    assert point["a"] == point["b"]


def test_without_seed_or_generator_variance_the_interval_is_the_subject_bootstrap():
    y_true, y_pred, y_score = _synthetic(80)
    ids = np.repeat(np.arange(40), 2)
    preds = np.repeat(y_pred[:, None, None], 3, axis=1).repeat(5, axis=2)  # every run predicts the same
    point, reps = hierarchical_bootstrap(weighted_accuracy(y_true), {"arm": preds}, ids, n_boot=300, seed=4)
    expected = bootstrap_ci(accuracy, y_true, y_pred, y_score, None, ids, n_boot=300, seed=4)
    assert point["arm"][0] == pytest.approx(expected[0], abs=1e-12)
    for name in LEVEL_SETS:  # the same draws as bootstrap_ci: the same interval whatever levels are added
        assert percentile_interval(reps[name]["arm"][:, 0]) == pytest.approx(expected[1:], abs=1e-12)


def test_seed_variance_widens_the_interval_as_expected():
    # 10 seeds whose accuracies spread with sd 0.1 around 0.75 on 2000 subjects: the subject-level sd of one
    # seed's accuracy is ~0.01, the seed mean's ~0.1 / sqrt(10) ~ 0.03, so adding seeds must dominate the width
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, 2000)
    seed_accuracy = np.clip(0.75 + 0.1 * rng.standard_normal(10), 0.5, 0.98)
    preds = _runs(y_true, seed_accuracy[None, :], rng)
    _, reps = hierarchical_bootstrap(weighted_accuracy(y_true), {"arm": preds}, None, n_boot=1000, seed=0)
    width = {name: np.subtract(*percentile_interval(reps[name]["arm"][:, 0])[::-1]) for name in LEVEL_SETS}
    se_subjects = np.sqrt(np.mean(seed_accuracy * (1 - seed_accuracy)) / 2000 / 10)  # averaged over 10 seeds
    se_seeds = np.std(seed_accuracy, ddof=0) / np.sqrt(10)  # the bootstrap's plug-in SE of a mean of 10
    assert width["subjects"] == pytest.approx(2 * 1.96 * se_subjects, rel=0.25)
    assert width["subjects+seeds"] == pytest.approx(2 * 1.96 * np.hypot(se_subjects, se_seeds), rel=0.25)
    assert width["subjects+seeds"] > 3 * width["subjects"]
    assert width["subjects+seeds+generators"] == width["subjects+seeds"]  # one generator adds nothing


def test_generator_variance_shows_only_when_generators_are_resampled():
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 2, 1000)
    with_synthetic = _runs(y_true, np.array([[0.6], [0.75], [0.9]]).repeat(4, axis=1), rng)  # 3 generators x 4
    real_only = _runs(y_true, np.full((1, 4), 0.7), rng)
    _, reps = hierarchical_bootstrap(weighted_accuracy(y_true), {"c": with_synthetic, "a": real_only}, None,
                                     n_boot=500)
    width = {name: {arm: np.subtract(*percentile_interval(r[arm][:, 0])[::-1]) for arm in r}
             for name, r in reps.items()}
    assert width["subjects+seeds+generators"]["c"] > 3 * width["subjects+seeds"]["c"]
    assert width["subjects+seeds+generators"]["a"] == width["subjects+seeds"]["a"]  # no generator in arm a


def test_hierarchical_bootstrap_refuses_mismatched_arms():
    y_true, _, _ = _synthetic(10)
    ok = np.zeros((10, 2, 3), int)
    with pytest.raises(InputError, match="preds"):
        hierarchical_bootstrap(weighted_accuracy(y_true), {"a": ok, "b": np.zeros((10, 2, 2), int)}, None)
    with pytest.raises(InputError, match="preds"):
        hierarchical_bootstrap(weighted_accuracy(y_true), {"a": ok, "b": np.zeros((9, 1, 1), int)}, None)
    with pytest.raises(InputError, match="subject_ids"):
        hierarchical_bootstrap(weighted_accuracy(y_true), {"a": ok}, np.arange(9))
