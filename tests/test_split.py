import numpy as np
import pytest

from data.errors import InputError
from data.split import subject_split


def test_subject_split_keeps_subjects_whole_and_stratifies():
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(100), 3)  # 3 slices per subject
    subject_label = (rng.random(100) < 0.3).astype(int)
    labels = subject_label[subjects]
    train_idx, test_idx = subject_split(subjects, labels, 0.2, seed=0)
    assert set(subjects[train_idx]).isdisjoint(subjects[test_idx])
    assert np.array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(300))
    assert len(set(subjects[test_idx])) == 20
    n_pos = subject_label.sum()  # stratum of positives: largest-remainder rounding of 0.2 * n_pos
    assert abs(len(set(subjects[test_idx][labels[test_idx] == 1])) - 0.2 * n_pos) < 1
    again = subject_split(subjects, labels, 0.2, seed=0)
    assert np.array_equal(again[1], test_idx)
    assert not np.array_equal(subject_split(subjects, labels, 0.2, seed=1)[1], test_idx)


def test_subject_split_with_many_tiny_strata_still_fills_test():
    strata = np.arange(50)  # one subject per stratum: per-stratum rounding alone would give an empty test set
    train_idx, test_idx = subject_split(np.arange(50), strata, 0.2, seed=0)
    assert len(test_idx) == 10 and len(train_idx) == 40


def test_subject_split_rejects_bad_inputs():
    with pytest.raises(InputError, match="fraction"):
        subject_split(np.arange(10), np.zeros(10), 1.0, seed=0)
    with pytest.raises(InputError, match="different strata"):
        subject_split(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 0]), 0.5, seed=0)
