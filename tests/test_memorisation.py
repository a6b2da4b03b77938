import numpy as np
import pytest

from data.errors import InputError
from evaluation.memorisation import donor_distance, memorisation, nearest_other_subject


def _real(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2, 8, 8)), [f"s{i // 2}" for i in range(n)]  # two slices a subject


def test_nearest_other_subject_skips_the_subjects_own_slices():
    real, ids = _real()
    real[1] = real[0]  # s0's second slice is a copy of its first: distance 0, but the same subject
    d = nearest_other_subject(real, ids)
    assert d[0] > 0.5
    ids_each = [f"t{i}" for i in range(len(real))]  # now they are different subjects
    assert nearest_other_subject(real, ids_each)[0] == pytest.approx(0.0, abs=1e-6)


def test_a_copied_donor_is_flagged_and_fresh_samples_are_not():
    real, ids = _real()
    rng = np.random.default_rng(1)
    rows = rng.integers(0, len(real), 30)
    fake = rng.normal(size=(30, 2, 8, 8)) * 3 + 10  # far from everything
    fake[:6] = real[rows[:6]]  # six copies of their donor
    cells = ["a"] * 15 + ["b"] * 15
    m = memorisation(fake, real, ids, rows, cells)
    assert m["overall"]["flagged_donor"] == pytest.approx(6 / 30)
    assert m["overall"]["flagged_nearest"] == pytest.approx(6 / 30)
    assert m["per_cell"]["a"]["flagged_donor"] == pytest.approx(6 / 15)
    assert m["per_cell"]["b"]["flagged_donor"] == 0.0
    assert m["natural_p5"] <= m["natural_median"]


def test_donor_distance_is_rms_and_checks_rows():
    real = np.zeros((3, 2, 4, 4))
    fake = np.ones((2, 2, 4, 4))
    assert donor_distance(fake, real, [0, 2]) == pytest.approx([1.0, 1.0])  # RMS of a unit difference
    with pytest.raises(InputError):
        donor_distance(fake, real, [0, 3])
