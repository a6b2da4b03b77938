import math

import numpy as np
import pytest

from data.cohort import LV, MYO, RV
from data.errors import InputError
from geometry.descriptors import Descriptors, describe, describe_ed_es, descriptors_table

SIZE = 128


def radius_map(centre=(63.4, 64.3), size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.hypot(yy - centre[0], xx - centre[1])


def lv_disk(radius: float) -> np.ndarray:
    return np.where(radius_map() <= radius, LV, 0).astype(np.int64)


def ring(inner: float, outer: float, centre=(63.4, 64.3)) -> np.ndarray:
    """LV blood pool of radius `inner` inside a myocardium ring out to `outer`."""
    r = radius_map(centre)
    mask = np.zeros((SIZE, SIZE), dtype=np.int64)
    mask[r <= outer] = MYO
    mask[r <= inner] = LV
    return mask


def test_disk_area_close_to_pi_r_squared():
    d = describe(lv_disk(20))
    assert abs(d.lv_area_mm2 / (math.pi * 20**2) - 1) < 0.02
    assert d.myo_area_mm2 == 0 and d.rv_area_mm2 == 0


def test_area_scales_with_pixel_area():
    mask = lv_disk(20)
    assert describe(mask, 1.5).lv_area_mm2 == pytest.approx(2.25 * describe(mask).lv_area_mm2)
    assert describe(mask, (1.0, 2.0)).lv_area_mm2 == pytest.approx(2.0 * describe(mask).lv_area_mm2)


@pytest.mark.parametrize("centre", [(63.4, 64.3), (60.0, 66.7)])
def test_ring_wall_thickness_within_a_pixel(centre):
    d = describe(ring(15, 21, centre))
    assert abs(d.wall_thickness_mm - 6) < 1
    assert abs(d.myo_area_mm2 / (math.pi * (21**2 - 15**2)) - 1) < 0.03


def test_wall_thickness_tracks_ring_width_and_spacing():
    widths = [3, 6, 10]
    measured = [describe(ring(15, 15 + w)).wall_thickness_mm for w in widths]
    np.testing.assert_allclose(measured, widths, atol=1.0)
    assert measured[0] < measured[1] < measured[2]
    assert describe(ring(15, 21), 0.5).wall_thickness_mm == pytest.approx(0.5 * measured[1])


def test_septum_is_measured_to_the_rv():
    # An RV pressed against the free wall must not change the measured thickness (RV is outside LV + MYO).
    mask = ring(15, 21)
    mask[(radius_map() > 21) & (radius_map() <= 30) & (np.mgrid[:SIZE, :SIZE][1] < 50)] = RV
    assert describe(mask).wall_thickness_mm == pytest.approx(describe(ring(15, 21)).wall_thickness_mm)


def test_empty_structures_give_documented_values():
    d = describe(lv_disk(20))  # no RV, no myocardium
    assert d.rv_area_mm2 == 0 and math.isnan(d.lv_rv_ratio)
    assert math.isnan(d.wall_thickness_mm)
    empty = describe(np.zeros((16, 16), dtype=np.uint8))
    assert (empty.lv_area_mm2, empty.myo_area_mm2, empty.rv_area_mm2) == (0, 0, 0)
    assert math.isnan(empty.wall_thickness_mm) and math.isnan(empty.lv_rv_ratio)
    myo_only = np.where(ring(15, 21) == LV, 0, ring(15, 21))  # no LV: no endocardial border
    assert math.isnan(describe(myo_only).wall_thickness_mm)


def test_lv_rv_ratio_of_two_disks():
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = np.zeros((SIZE, SIZE), dtype=np.int64)
    mask[np.hypot(yy - 64.2, xx - 35.6) <= 12] = LV
    mask[np.hypot(yy - 63.7, xx - 90.1) <= 18] = RV
    assert describe(mask).lv_rv_ratio == pytest.approx((12 / 18) ** 2, rel=0.03)


def test_ef_proxy_of_shrinking_disk():
    row = describe_ed_es(lv_disk(20), lv_disk(14))
    assert row["ef_proxy"] == pytest.approx(1 - (14 / 20) ** 2, rel=0.03)
    assert row["ed_lv_area_mm2"] > row["es_lv_area_mm2"]
    assert set(row) == {f"{p}_{k}" for p in ("ed", "es") for k in Descriptors.__dataclass_fields__} | {"ef_proxy"}
    assert describe_ed_es(lv_disk(20), lv_disk(14), 0.7)["ef_proxy"] == pytest.approx(row["ef_proxy"])
    assert math.isnan(describe_ed_es(np.zeros((8, 8), int), np.zeros((8, 8), int))["ef_proxy"])


def test_descriptors_table_rows_match_describe_ed_es():
    masks = np.stack([np.stack([ring(15, 21), ring(11, 18)]), np.stack([lv_disk(20), lv_disk(14)])])
    table = descriptors_table(masks, spacing_mm=[1.0, 0.5])
    assert table.shape[0] == 2
    for i, spacing in enumerate([1.0, 0.5]):
        expected = describe_ed_es(masks[i, 0], masks[i, 1], spacing)
        for key, value in expected.items():
            assert table[key][i] == pytest.approx(value, nan_ok=True)
    assert descriptors_table(masks, 2.0)["ed_lv_area_mm2"].tolist() == pytest.approx(
        [4 * describe(m).lv_area_mm2 for m in masks[:, 0]])


def test_bad_inputs_raise_input_error():
    bad = lv_disk(10)
    bad[0, 0] = 5
    with pytest.raises(InputError, match=r"labels \[5\]"):
        describe(bad)
    with pytest.raises(InputError, match="shape"):
        describe(np.zeros((2, 8, 8), dtype=np.int64))
    for spacing in (0.0, -1.0, math.nan, "abc", (1.0, 1.0, 1.0)):
        with pytest.raises(InputError, match="spacing"):
            describe(lv_disk(10), spacing)
    with pytest.raises(InputError, match=r"\(N, 2, H, W\)"):
        descriptors_table(np.zeros((2, 3, 8, 8), dtype=np.int64))
    with pytest.raises(InputError, match="one per sample"):
        descriptors_table(np.zeros((2, 2, 8, 8), dtype=np.int64), spacing_mm=[1.0, 1.0, 1.0])
