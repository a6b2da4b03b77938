import math

import numpy as np
import pytest

from data.attributes import Attributes
from data.cohort import LV, MYO, RV, Subject
from data.errors import InputError
from data.preprocess import PreprocessConfig, config_hash, mid_lv_slice, preprocess_subject, slice_position

BG, LV_INT, MYO_INT, RV_INT = 0.1, 1.0, 0.3, 0.8


def heart_subject(shape=(96, 80, 12), spacing=(1.25, 1.25, 8.0), centre_mm=(60.0, 50.0), lv_z=range(3, 10),
                  lv_radius_mm=lambda z: 20.0, myo_mm=6.0, rv=True, known_spacing=True, subject_id="s0"):
    """Synthetic heart: per slice an LV disk, MYO ring and RV disk beside it; ES has a 0.7x smaller LV."""
    x = np.arange(shape[0])[:, None] * spacing[0] - centre_mm[0]
    y = np.arange(shape[1])[None, :] * spacing[1] - centre_mm[1]
    r = np.hypot(x, y)
    masks = [np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)]
    for z in lv_z:
        for mask, scale in zip(masks, (1.0, 0.7)):
            lv_r = lv_radius_mm(z) * scale
            if rv:
                mask[..., z][np.hypot(x - lv_r - myo_mm - 14.0, y) < 12.0] = RV
            mask[..., z][r <= lv_r + myo_mm] = MYO
            mask[..., z][r <= lv_r] = LV
    lut = np.array([BG, LV_INT, MYO_INT, RV_INT], np.float32)
    return Subject(subject_id, lut[masks[0]], lut[masks[1]], masks[0], masks[1], np.diag([*spacing, 1.0]),
                   tuple(spacing) if known_spacing else None, Attributes("female", 47.0, 22.0, "heart_failure"))


def _centroid(binary: np.ndarray) -> np.ndarray:
    return np.argwhere(binary).mean(axis=0)


def test_mid_lv_slice_and_offsets():
    subject = heart_subject(lv_z=range(3, 10), lv_radius_mm=lambda z: 12.0 + 2.0 * z, rv=False)
    assert mid_lv_slice(subject.mask_ed) == 6
    even = heart_subject(lv_z=range(3, 11), rv=False)
    assert mid_lv_slice(even.mask_ed) == 6  # lower middle of 3..10
    samples = preprocess_subject(subject, PreprocessConfig(slice_offsets=(-1, 0, 1, 4, 0)))
    assert [s.slice_index for s in samples] == [5, 6, 7]  # 10 is outside the LV, duplicate 0 ignored
    for sample in samples:  # each sample holds its own slice: LV area matches that slice's radius (2 mm/px)
        expected = math.pi * ((12.0 + 2.0 * sample.slice_index) / 2.0) ** 2
        assert abs((sample.mask[0] == LV).sum() / expected - 1) < 0.03


def test_heart_is_centred_and_outside_is_padded():
    subject = heart_subject(centre_mm=(35.0, 70.0))  # crop reaches past the volume's x = 0 edge
    cfg = PreprocessConfig(size=64, crop_mm=128.0)
    (sample,) = preprocess_subject(subject, cfg)
    assert sample.image.shape == sample.mask.shape == (2, 64, 64)
    assert sample.image.dtype == np.float32 and sample.mask.dtype == np.uint8
    centre = (cfg.size - 1) / 2.0
    assert np.all(np.abs(_centroid(sample.mask[0] > 0) - centre) <= 1.0)
    # x < 0 mm (rows before the volume starts) is padding: background label, lowest intensity.
    heart_x_mm = _centroid(np.isin(subject.mask_ed[..., 6], (LV, MYO, RV)))[0] * 1.25
    outside_rows = int(np.floor(centre - (heart_x_mm + 1.25) / 2.0))
    assert outside_rows >= 5
    assert np.all(sample.mask[:, :outside_rows] == 0)
    assert np.all(sample.image[:, :outside_rows] == -1.0)
    # ED and ES share the ED crop, channel 1 is ES (smaller LV).
    assert (sample.mask[1] == LV).sum() < 0.6 * (sample.mask[0] == LV).sum()


@pytest.mark.parametrize("spacing", [(1.25, 1.25, 8.0), (1.25, 0.9, 10.0)])
def test_resampling_preserves_physical_size(spacing):
    subject = heart_subject(spacing=spacing, myo_mm=0.0, rv=False)  # LV disk of radius 20 mm only
    cfg = PreprocessConfig(size=64, crop_mm=128.0)
    (sample,) = preprocess_subject(subject, cfg)
    lv = sample.mask[0] == LV
    radius_px = 20.0 / (cfg.crop_mm / cfg.size)
    assert abs(lv.sum() / (math.pi * radius_px ** 2) - 1) < 0.03
    extent = lv.any(axis=1).sum(), lv.any(axis=0).sum()  # a circle again, whatever the voxel aspect
    assert abs(extent[0] - extent[1]) <= 1
    bright = sample.image[0] > 0.5  # the image follows the mask (linear interpolation of the same disk)
    assert abs(bright.sum() / lv.sum() - 1) < 0.05


def test_unknown_spacing_uses_the_configured_default():
    subject = heart_subject(myo_mm=0.0, rv=False, known_spacing=False)  # disk of 16 voxels radius
    (sample,) = preprocess_subject(subject, PreprocessConfig(unknown_spacing_mm=1.5))
    assert sample.spacing_assumed
    radius_px = 16.0 * 1.5 / 2.0
    assert abs((sample.mask[0] == LV).sum() / (math.pi * radius_px ** 2) - 1) < 0.03


def test_masks_keep_internal_labels():
    (sample,) = preprocess_subject(heart_subject(), PreprocessConfig())
    assert set(np.unique(sample.mask[0]).tolist()) == {0, LV, MYO, RV}
    assert set(np.unique(sample.mask[1]).tolist()) <= {0, LV, MYO, RV}
    bad = heart_subject()
    bad.mask_es[0, 0, 0] = 5
    with pytest.raises(InputError, match="s0.*mask_es"):
        preprocess_subject(bad, PreprocessConfig())


def test_robust_normalisation_closed_form():
    subject = heart_subject()
    subject.image_ed[:5, 0, 6] = 1000.0  # a few outliers must not set the scale
    (sample,) = preprocess_subject(subject, PreprocessConfig(intensity_percentiles=(1.0, 99.0)))
    assert sample.image.min() == -1.0 and sample.image.max() == 1.0
    # p1 = background (0.1), p99 = LV (1.0): interior MYO (0.3) maps to 2 * (0.3 - 0.1) / 0.9 - 1.
    inner = sample.mask[0] == MYO
    assert np.median(sample.image[0][inner]) == pytest.approx(2 * (MYO_INT - BG) / (LV_INT - BG) - 1, abs=1e-4)
    flat = heart_subject()
    flat.image_ed[:] = 3.0
    flat.image_es[:] = 3.0
    (sample,) = preprocess_subject(flat, PreprocessConfig())
    assert np.all(np.isfinite(sample.image)) and np.all(np.abs(sample.image) <= 1.0)


def test_subject_without_lv_is_an_input_error():
    subject = heart_subject(subject_id="patient042")
    subject.mask_ed[subject.mask_ed == LV] = MYO
    with pytest.raises(InputError, match="patient042.*LV"):
        preprocess_subject(subject, PreprocessConfig())
    mismatched = heart_subject()
    mismatched.image_es = mismatched.image_es[:, :, :5]
    with pytest.raises(InputError, match="shape"):
        preprocess_subject(mismatched, PreprocessConfig())


def test_config_hash_is_stable_and_sensitive():
    base = PreprocessConfig()
    assert config_hash(base) == config_hash(PreprocessConfig()) == config_hash(PreprocessConfig(crop_mm=128, size=64.0))
    assert config_hash(PreprocessConfig(slice_offsets=[0])) == config_hash(base)  # list vs tuple
    changed = [PreprocessConfig(size=32), PreprocessConfig(crop_mm=100.0), PreprocessConfig(unknown_spacing_mm=1.0),
               PreprocessConfig(slice_offsets=(-1, 0, 1)), PreprocessConfig(intensity_percentiles=(0.5, 99.5))]
    hashes = {config_hash(c) for c in changed} | {config_hash(base)}
    assert len(hashes) == len(changed) + 1
    assert len(config_hash(base)) == 12 and int(config_hash(base), 16) >= 0
    with pytest.raises(InputError, match="intensity_percentiles"):
        PreprocessConfig(intensity_percentiles=(99.0, 1.0))
    with pytest.raises(InputError, match="crop_mm"):
        PreprocessConfig(crop_mm=0.0)


def test_all_lv_slices_carry_their_position_base_to_apex():
    subject = heart_subject(lv_z=range(2, 11), rv=False)  # 9 LV slices: thirds of 3
    samples = preprocess_subject(subject, PreprocessConfig(all_lv_slices=True, slice_offsets=(0,)))
    assert [s.slice_index for s in samples] == list(range(2, 11))
    assert [s.position for s in samples] == ["basal"] * 3 + ["mid"] * 3 + ["apical"] * 3
    assert [s.position for s in preprocess_subject(subject, PreprocessConfig())] == [None]
    assert slice_position(0, 1) == "mid" and [slice_position(r, 2) for r in (0, 1)] == ["basal", "apical"]
    with pytest.raises(InputError):
        slice_position(3, 3)
    assert config_hash(PreprocessConfig(all_lv_slices=True)) != config_hash(PreprocessConfig())
