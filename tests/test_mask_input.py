import warnings

import numpy as np
import pytest
from PIL import Image

from data.attributes import Attributes
from data.cohort import LV, MYO, RV, Subject
from data.errors import InputError
from data.mask_input import load_control_masks
from data.nifti import save_nifti
from data.preprocess import PreprocessConfig, preprocess_subject
from tests.fixtures import ACDC_AFFINE, FIXTURE_AFFINE, FIXTURE_SPACING, INTERNAL_TO_ACDC, heart_image, heart_mask

CFG = PreprocessConfig(size=32, crop_mm=128.0, slice_offsets=(-1, 0, 1))
TO_ACDC = np.array([INTERNAL_TO_ACDC[k] for k in range(4)], dtype=np.uint8)


@pytest.fixture()
def masks(tmp_path):
    """A 3D ED/ES pair in ukbb labels on disk, plus the volumes themselves."""
    rng = np.random.default_rng(0)
    ed, es = heart_mask((40, 40, 5), rng), heart_mask((40, 40, 5), rng, scale=0.7)
    save_nifti(tmp_path / "ed.nii.gz", ed, FIXTURE_AFFINE)
    save_nifti(tmp_path / "es.nii.gz", es, FIXTURE_AFFINE)
    return tmp_path, ed, es


def test_same_preprocessing_as_training(masks):
    folder, ed, es = masks
    control = load_control_masks(folder / "ed.nii.gz", folder / "es.nii.gz", CFG)
    assert control.shape == (2, 32, 32) and control.dtype == np.uint8
    rng = np.random.default_rng(1)
    subject = Subject("s", heart_image(ed, rng), heart_image(es, rng), ed, es, FIXTURE_AFFINE, FIXTURE_SPACING, Attributes())
    training = [s for s in preprocess_subject(subject, CFG) if s.slice_index == 2][0]  # offset 0: mid-LV slice
    assert np.array_equal(control, training.mask)
    assert {LV, MYO, RV} <= set(np.unique(control[0]))


def test_acdc_labels_and_swapped_convention_warning(masks):
    folder, ed, es = masks
    save_nifti(folder / "ed_acdc.nii.gz", TO_ACDC[ed], ACDC_AFFINE)  # the ACDC convention: its labels, stored LPS
    save_nifti(folder / "es_acdc.nii.gz", TO_ACDC[es], ACDC_AFFINE)
    ukbb = load_control_masks(folder / "ed.nii.gz", folder / "es.nii.gz", CFG)
    acdc = load_control_masks(folder / "ed_acdc.nii.gz", folder / "es_acdc.nii.gz", CFG, labels="acdc")
    assert np.array_equal(ukbb, acdc)
    with pytest.warns(UserWarning, match="acdc"):  # an ACDC mask read as ukbb: myocardium rings the "RV"
        load_control_masks(folder / "ed_acdc.nii.gz", folder / "es_acdc.nii.gz", CFG, labels="ukbb")


def test_slice_choice_and_2d_files(masks):
    folder, ed, es = masks
    save_nifti(folder / "ed_z1.nii.gz", ed[:, :, 1], FIXTURE_AFFINE)
    save_nifti(folder / "es_z1.nii.gz", es[:, :, 1], FIXTURE_AFFINE)
    chosen = load_control_masks(folder / "ed.nii.gz", folder / "es.nii.gz", CFG, slice_index=1)
    from_2d = load_control_masks(folder / "ed_z1.nii.gz", folder / "es_z1.nii.gz", CFG)
    mid = load_control_masks(folder / "ed.nii.gz", folder / "es.nii.gz", CFG)
    assert np.array_equal(chosen, from_2d)
    assert not np.array_equal(chosen, mid)  # slice 1 is not the mid-LV slice 2 (the heart tapers)
    with pytest.raises(InputError, match="slice 9 outside"):
        load_control_masks(folder / "ed.nii.gz", folder / "es.nii.gz", CFG, slice_index=9)


def test_missing_es_uses_ed_with_warning(masks):
    folder, _, _ = masks
    with pytest.warns(UserWarning, match="no ES mask"):
        control = load_control_masks(folder / "ed.nii.gz", None, CFG)
    assert np.array_equal(control[0], control[1])


def test_png_values_and_grey_levels_agree(tmp_path):
    plane = heart_mask((48, 48, 1), np.random.default_rng(2))[:, :, 0]
    Image.fromarray(plane).save(tmp_path / "values.png")
    Image.fromarray((plane * 85).astype(np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.stack([plane * 85] * 3, axis=-1).astype(np.uint8)).save(tmp_path / "rgb_grey.png")
    a = load_control_masks(tmp_path / "values.png", tmp_path / "values.png", CFG)
    b = load_control_masks(tmp_path / "grey.png", tmp_path / "grey.png", CFG)
    c = load_control_masks(tmp_path / "rgb_grey.png", tmp_path / "rgb_grey.png", CFG)
    assert np.array_equal(a, b) and np.array_equal(a, c)
    # One PNG pixel = one output pixel (crop_mm / size), so the LV keeps its area.
    assert abs(int((a[0] == LV).sum()) - int((plane == LV).sum())) <= 0.1 * (plane == LV).sum()


def _error(tmp_path, ed, es, match, labels="ukbb"):
    with pytest.raises(InputError, match=match):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_control_masks(ed, es, CFG, labels=labels)


def test_bad_masks_give_clear_errors(masks):
    folder, ed, es = masks
    bad = ed.copy()
    bad[0, 0, 0] = 7
    save_nifti(folder / "labels.nii.gz", bad, FIXTURE_AFFINE)
    _error(folder, folder / "labels.nii.gz", None, r"labels \[0, 1, 2, 3, 7\] include \[7\].*ukbb.*1 LV blood pool")
    save_nifti(folder / "empty.nii.gz", np.zeros_like(ed), FIXTURE_AFFINE)
    _error(folder, folder / "empty.nii.gz", None, "empty")
    no_lv = np.where(ed == LV, MYO, ed).astype(np.uint8)
    save_nifti(folder / "nolv.nii.gz", no_lv, FIXTURE_AFFINE)
    _error(folder, folder / "nolv.nii.gz", None, "no LV")
    save_nifti(folder / "small.nii.gz", es[:30], FIXTURE_AFFINE)
    _error(folder, folder / "ed.nii.gz", folder / "small.nii.gz", "ED/ES shape mismatch")
    (folder / "junk.nii.gz").write_bytes(b"not a nifti at all")
    _error(folder, folder / "junk.nii.gz", None, "cannot read NIfTI")
    _error(folder, folder / "missing.nii.gz", None, "not found")
    (folder / "mask.txt").write_text("1 2 3")
    _error(folder, folder / "mask.txt", None, "unknown mask format")
    Image.fromarray(np.full((8, 8, 3), (255, 0, 0), np.uint8)).save(folder / "red.png")
    _error(folder, folder / "red.png", None, "colour PNG")
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(folder / "grad.png")
    _error(folder, folder / "grad.png", None, "expected label values")
    _error(folder, folder / "ed.nii.gz", None, "unknown label convention", labels="mnms")
