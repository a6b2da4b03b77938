import numpy as np
import pandas as pd
import pytest

from data.cohort import LV, MYO
from data.errors import InputError
from evaluation.fid import fid_from_features
from evaluation.held_out import disjoint_fid, ef_errors, realism_labels, target_checks


def _features(n_subjects=6, per_subject=5, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"s{i}" for i in range(n_subjects)], per_subject)
    return rng.normal(size=(len(ids), dim)), list(ids)


def test_disjoint_fid_of_exact_copies_equals_its_bound_and_a_shift_adds_its_square():
    real, ids = _features()
    n = 15  # every image of a half (3 subjects x 5): FID is order-free, so copies of real A give exactly the bound
    same = disjoint_fid(real, ids, real.copy(), ids, n, repeats=3)
    assert same["fake_vs_real"]["mean"] == pytest.approx(same["real_vs_real_bound"]["mean"])
    assert same["n_per_side"] == n and same["ratio"] == pytest.approx(1.0)
    shift = np.array([2.0, 0.0, 0.0])
    moved = disjoint_fid(real, ids, real + shift, ids, n, repeats=3)
    # FID(A + d, B) - FID(A, B) = |mu_A + d - mu_B|^2 - |mu_A - mu_B|^2, averaged over the same halves
    assert moved["fake_vs_real"]["mean"] > same["fake_vs_real"]["mean"] + 2.0
    assert moved["real_vs_real_bound"] == same["real_vs_real_bound"]


def test_disjoint_fid_never_compares_a_fake_with_its_own_subject():
    real, ids = _features(n_subjects=2, per_subject=4)
    # each subject's fakes are copies of that subject's real images: pairing a subject with itself would give 0
    out = disjoint_fid(real, ids, real.copy(), ids, 4, repeats=4)
    assert out["fake_vs_real"]["mean"] == pytest.approx(fid_from_features(real[:4], real[4:]))
    with pytest.raises(InputError):
        disjoint_fid(real, ids[:-1], real, ids, 4, 1)


def _disk_pair(r_ed, r_es, size=48):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    pair = np.zeros((2, size, size), np.uint8)
    for k, radius in enumerate((r_ed, r_es)):
        pair[k][r < radius + 3] = MYO
        pair[k][r < radius] = LV
    return pair


def test_ef_errors_zero_on_identical_masks_and_close_to_disk_closed_form():
    target = np.stack([_disk_pair(12, 8)])
    assert ef_errors(target, target, 1.5)[0] == 0.0
    pred = np.stack([_disk_pair(12, 12)])  # no contraction: EF 0 against 1 - (8/12)^2, so the error is negative
    assert ef_errors(pred, target, 1.5)[0] == pytest.approx(-(1 - (8 / 12) ** 2), abs=0.03)
    assert ef_errors(target, pred, 1.5)[0] == pytest.approx(1 - (8 / 12) ** 2, abs=0.03)


def test_target_checks_read_the_ratios():
    metrics = {"control_fidelity": {"fake": {"dice": {"LV": 0.81, "MYO": 0.5, "RV": 0.7}, "ef_proxy_abs_error_median": 0.04},
                                    "real_test": {"dice": {"LV": 0.9, "MYO": 0.8, "RV": 0.7}}},
               "fid_disjoint": {"ratio": 2.5}}
    checks = target_checks(metrics)
    assert checks["dice_ratio_LV"]["value"] == pytest.approx(0.9) and checks["dice_ratio_LV"]["met"]
    assert not checks["dice_ratio_MYO"]["met"] and checks["dice_ratio_RV"]["met"]
    assert checks["ef_proxy_abs_error_median"]["met"] and not checks["fid_over_bound"]["met"]


def test_realism_labels_join_health_and_position_from_the_prompt():
    rows = pd.DataFrame({"subject_id": ["a", "b", "c"], "sex": [None] * 3, "age": [np.nan] * 3, "bmi": [22.0, np.nan, np.nan],
                         "health": ["healthy", None, None],
                         "prompt": ["normal BMI, healthy, apical slice", "mid slice", ""]})
    assert realism_labels(rows) == ["healthy|apical", "mid", None]
