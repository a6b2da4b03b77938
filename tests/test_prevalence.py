import numpy as np
import pytest

from data.errors import InputError
from data.prevalence import prevalence_subsample, subjects_for_positives


def table(n_pos, n_neg, rows_per_subject=3):
    labels = np.array([1] * n_pos + [0] * n_neg)
    subjects = np.repeat([f"s{i:04d}" for i in range(len(labels))], rows_per_subject)
    return subjects, np.repeat(labels, rows_per_subject)


@pytest.mark.parametrize("n_pos, n_neg, prevalence, kept_pos, kept_neg", [
    (300, 700, 0.25, 233, 700),  # too many positives: all 700 negatives, 700 / 3 positives
    (100, 900, 0.25, 100, 300),  # too few: all 100 positives, 3 negatives each
    (300, 700, 0.10, 78, 700),
    (300, 2970, 0.01, 30, 2970),
])
def test_kept_counts_are_the_closed_form(n_pos, n_neg, prevalence, kept_pos, kept_neg):
    subjects, labels = table(n_pos, n_neg)
    rows = prevalence_subsample(subjects, labels, prevalence, seed=0)
    kept = dict(zip(subjects[rows], labels[rows]))
    assert sum(kept.values()) == kept_pos and len(kept) - sum(kept.values()) == kept_neg
    assert abs(sum(kept.values()) / len(kept) - prevalence) < 1 / len(kept)
    assert len(rows) == 3 * len(kept)  # whole subjects: all three rows of every kept subject
    assert np.all(np.diff(rows) > 0)


def test_seeded_and_the_scarce_class_kept_whole():
    subjects, labels = table(300, 700)
    a, b, c = (prevalence_subsample(subjects, labels, 0.25, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    negatives = set(subjects[labels == 0])
    assert negatives <= set(subjects[a]) and negatives <= set(subjects[c])


def test_too_small_and_bad_input_are_one_clear_error():
    subjects, labels = table(60, 140)  # like the tiny preset's 200 test subjects: at 0.01 they keep one positive
    assert len(set(subjects[prevalence_subsample(subjects, labels, 0.01, seed=0)])) == 141
    with pytest.raises(InputError, match="experiment.test_prevalence: .*keeps 0 positive.*about 334 subjects"):
        prevalence_subsample(subjects, labels, 0.003, seed=0, where="experiment.test_prevalence")
    with pytest.raises(InputError, match="in \\(0, 1\\)"):
        prevalence_subsample(subjects, labels, 1.0, seed=0)
    with pytest.raises(InputError, match="both labels"):
        prevalence_subsample(["a", "a", "b"], [0, 1, 0], 0.5, seed=0)
    assert subjects_for_positives(50, 0.01) == 5000 and subjects_for_positives(1, 0.25) == 4
