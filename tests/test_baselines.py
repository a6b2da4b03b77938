"""Tests for classify/baselines.py: the validation-chosen threshold and the EF-from-masks rule."""
import numpy as np
import pandas as pd
import pytest

from classify.baselines import (best_threshold, central_rows, ef_rule_scores, fit_ef_rule, shift_to_threshold,
                                subject_ef)
from classify.fairness import balanced_accuracy
from data.errors import InputError
from data.slices import SliceSet


def test_best_threshold_maximises_balanced_accuracy_ties_nearest_half():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    scores = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, 80), 0, 1)
    t = best_threshold(y, scores)
    grid = np.linspace(-0.01, 1.01, 5001)  # brute force: no cut-off does better
    assert balanced_accuracy(y, (scores >= t).astype(int)) >= balanced_accuracy(
        y, (scores[:, None] >= grid[None]).astype(int)).max() - 1e-12
    assert best_threshold([0, 1], [0.1, 0.9]) == pytest.approx(0.5)  # the whole gap is optimal: nearest 0.5
    assert best_threshold([0, 0, 1], [0.6, 0.7, 0.8]) == pytest.approx(0.75)
    with pytest.raises(InputError, match="both classes"):
        best_threshold([1, 1], [0.2, 0.3])


def test_shift_to_threshold_moves_the_cut_to_half_and_keeps_the_order():
    p = np.random.default_rng(1).uniform(0, 1, 500)
    for t in (0.05, 0.3, 0.5, 0.83):
        shifted = shift_to_threshold(p, t)
        assert np.array_equal(shifted >= 0.5, p >= t) and np.array_equal(np.argsort(shifted), np.argsort(p))
    np.testing.assert_allclose(shift_to_threshold(p, 0.5), p, atol=1e-9)


def _ef_slices(efs, labels, prefix="s", per_subject=1):
    """One subject per EF; its slices' ED LV is 10x10 px, ES has round(100 (1 - EF)) px; slice k of a subject
    has EF + 0.2 (k - middle), so only the central one carries the wanted EF."""
    masks, ids, z, records = [], [], [], []
    for i, (ef, y) in enumerate(zip(efs, labels)):
        for k in range(per_subject):
            m = np.zeros((2, 16, 16), np.uint8)
            m[0, 2:12, 2:12] = 1
            es = int(round(100 * (1 - np.clip(ef + 0.2 * (k - (per_subject - 1) // 2), 0, 1))))
            m[1].reshape(-1)[:es] = 1
            masks.append(m), ids.append(f"{prefix}{i}"), z.append(k)
            records.append({"subject_id": f"{prefix}{i}", "sex": None, "age": None, "bmi": None,
                            "health": "heart_failure" if y else "healthy", "prompt": ""})
    n = len(masks)
    return SliceSet(np.zeros((n, 2, 16, 16), np.float32), np.stack(masks), ids, np.array(z), pd.DataFrame(records))


def test_ef_rule_uses_the_central_slice_and_fits_on_training_subjects_only():
    train = _ef_slices([0.25, 0.30, 0.35, 0.60, 0.65, 0.70], [1, 1, 1, 0, 0, 0], per_subject=3)
    np.testing.assert_allclose(subject_ef(train).loc[["s0", "s5"]], [0.25, 0.70])
    assert list(central_rows(train).loc[["s0", "s1"]]) == [1, 4]
    labels = np.repeat([1, 1, 1, 0, 0, 0], 3)
    cutoff = fit_ef_rule(train, labels)
    assert 0.35 <= cutoff < 0.60
    # a test set whose own best cut-off is far higher: the rule keeps the training one
    test = _ef_slices([0.62, 0.66, 0.80, 0.85], [1, 1, 0, 0], prefix="t")
    scores = ef_rule_scores(test, cutoff)
    assert np.array_equal(scores >= 0.5, [False] * 4)
    assert fit_ef_rule(train, labels) == cutoff  # deterministic
    assert np.array_equal(ef_rule_scores(train, cutoff) >= 0.5, labels == 1)
