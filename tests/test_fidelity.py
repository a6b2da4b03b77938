import math

import numpy as np
import pytest

from data.cohort import LV, MYO, RV
from data.errors import InputError
from evaluation.fidelity import descriptor_errors, dice, dice_per_structure


def _square(size=16, top=4, left=4, side=4, label=LV):
    m = np.zeros((size, size), np.uint8)
    m[top:top + side, left:left + side] = label
    return m


def test_dice_identical_is_one_disjoint_is_zero_and_partial_is_exact():
    a = _square()
    assert dice(a, a, LV) == 1.0
    assert dice(a, _square(left=10), LV) == 0.0
    assert dice(a, _square(left=6), LV) == pytest.approx(2 * 8 / 32)  # 4x4 squares overlapping in 4x2


def test_dice_of_a_label_absent_from_both_is_one():
    a = _square(label=LV)
    assert dice(a, a, RV) == 1.0
    assert dice(a, np.zeros_like(a), LV) == 0.0  # present in one only


def test_dice_per_structure_averages_items():
    target = np.stack([_square(label=LV) + _square(top=10, label=RV), _square(label=MYO)])
    pred = target.copy()
    pred[1] = 0  # second item loses its MYO entirely
    scores = dice_per_structure(pred, target)
    assert scores["LV"] == 1.0 and scores["RV"] == 1.0  # item 2 has neither: counts as agreement
    assert scores["MYO"] == pytest.approx(0.5)  # item 1 absent-absent = 1, item 2 = 0


def test_dice_rejects_mismatched_shapes():
    with pytest.raises(InputError):
        dice(np.zeros((4, 4)), np.zeros((4, 5)), LV)


def _area_describe(mask_ed, mask_es, spacing_mm):
    """Stand-in descriptor: LV areas and an area EF proxy (NaN for an empty ED LV)."""
    ed, es = float((mask_ed == LV).sum()) * spacing_mm ** 2, float((mask_es == LV).sum()) * spacing_mm ** 2
    return {"ed_lv_area_mm2": ed, "ef_proxy": (ed - es) / ed if ed > 0 else math.nan}


def test_descriptor_errors_with_known_area_offsets():
    target = np.stack([np.stack([_square(side=4), _square(side=2)])] * 3)
    pred = target.copy()
    pred[0, 0] = _square(side=5)  # ED LV area 25 vs 16 px
    pred[2, 0] = 0  # empty ED LV: EF proxy undefined for this item
    err = descriptor_errors(pred, target, 0.5, keys=("ed_lv_area_mm2", "ef_proxy"), describe=_area_describe)
    assert err["ed_lv_area_mm2_mae"] == pytest.approx((9 + 0 + 16) * 0.25 / 3)
    assert err["n_valid_ef_proxy"] == 2
    assert err["ef_proxy_mae"] == pytest.approx(abs((25 - 4) / 25 - (16 - 4) / 16) / 2)


def test_descriptor_errors_with_geometry_descriptors_are_zero_for_identical_masks():
    pytest.importorskip("geometry.descriptors")
    yy, xx = np.mgrid[:32, :32]
    r = np.hypot(yy - 16, xx - 16)
    frame = lambda r_lv: np.where(r < r_lv, LV, np.where(r < r_lv + 3, MYO, 0)).astype(np.uint8)  # noqa: E731
    masks = np.stack([np.stack([frame(7), frame(5)]), np.stack([frame(8), frame(4)])])
    err = descriptor_errors(masks, masks, 1.5)
    assert all(v == 0 for k, v in err.items() if k.endswith("_mae")), err
    bigger = np.stack([np.stack([frame(8), frame(5)]), np.stack([frame(8), frame(4)])])
    assert descriptor_errors(bigger, masks, 1.5)["ed_lv_area_mm2_mae"] > 0


def test_descriptor_errors_rejects_non_pairs_and_unknown_keys():
    m = np.zeros((2, 3, 8, 8), np.uint8)
    with pytest.raises(InputError):
        descriptor_errors(m, m, 1.0, describe=_area_describe)
    with pytest.raises(InputError):
        descriptor_errors(m[:, :2], m[:, :2], 1.0, keys=("nope",), describe=_area_describe)
