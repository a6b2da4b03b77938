"""Issue 18, class 3: degenerate training subjects. The cohort reader (data/nifti.py:load_subject ->
check_training_subject) refuses a mask with no heart label and an in-plane voxel size no cardiac MR volume has
(a header whose spatial unit is micron or metre), naming the file; `data.skip_bad=true` skips and lists them."""
import nibabel as nib
import numpy as np
import pytest

import train
from data.errors import InputError
from data.nifti import save_nifti
from data.reader import read_cohort
from tests.fixtures import ACDC_AFFINE, write_acdc_fixture, write_ukbb_fixture
from tests.test_robustness import SMOKE, assert_refused, call, tree

FIRST = "1000001"


def _resave(path, data=None, unit="mm", affine=None):
    image = nib.load(str(path))
    save_nifti(path, np.asarray(image.dataobj) if data is None else data, image.affine if affine is None else affine,
               spatial_unit=unit)


def _empty(path):
    _resave(path, data=np.zeros(nib.load(str(path)).shape, np.uint8))


UKBB_FAULTS = {  # name -> (break subject FIRST, fragments)
    "empty ES mask": (lambda f: _empty(f / "seg_sa_ES.nii.gz"), ["seg_sa_ES.nii.gz", "ES mask is empty"]),
    "empty ED mask": (lambda f: _empty(f / "seg_sa_ED.nii.gz"), ["seg_sa_ED.nii.gz", "ED mask is empty"]),
    "micron unit": (lambda f: [_resave(f / n, unit="micron") for n in ("sa_ED.nii.gz", "sa_ES.nii.gz", "seg_sa_ED.nii.gz",
                                                                       "seg_sa_ES.nii.gz")],
                    ["sa_ED.nii.gz", "in-plane voxel size 0.0018 x 0.0018 mm", "expected 0.1 to 20 mm", "micron"]),
    "metre unit": (lambda f: [_resave(f / n, unit="meter") for n in ("sa_ED.nii.gz", "sa_ES.nii.gz", "seg_sa_ED.nii.gz",
                                                                     "seg_sa_ES.nii.gz")],
                   ["in-plane voxel size 1800 x 1800 mm"]),
    "pixdim 50 mm": (lambda f: [_resave(f / n, affine=np.diag([50.0, 50.0, 8.0, 1.0])) for n in
                                ("sa_ED.nii.gz", "sa_ES.nii.gz", "seg_sa_ED.nii.gz", "seg_sa_ES.nii.gz")],
                     ["in-plane voxel size 50 x 50 mm"]),
}


@pytest.mark.parametrize("fault", UKBB_FAULTS)
def test_a_degenerate_subject_is_refused_or_skipped(tmp_path, fault):
    root = write_ukbb_fixture(tmp_path, n=3)
    breaker, fragments = UKBB_FAULTS[fault]
    breaker(root / FIRST)
    with pytest.raises(InputError) as caught:
        read_cohort(root)
    assert all(f in str(caught.value) for f in fragments), str(caught.value)
    cohort = read_cohort(root, skip_bad=True)
    assert [s.subject_id for s in cohort.subjects] == ["1000002", "1000003"]
    assert cohort.skipped[0][0] == FIRST and fragments[-1] in cohort.skipped[0][1]


def test_an_acdc_subject_with_an_empty_es_mask_is_refused(tmp_path):
    root = write_acdc_fixture(tmp_path, n=2)
    gt = root / "patient002" / "patient002_frame12_gt.nii.gz"
    save_nifti(gt, np.zeros(nib.load(str(gt)).shape, np.uint8), ACDC_AFFINE)
    with pytest.raises(InputError, match="patient002_frame12_gt.nii.gz: ES mask is empty"):
        read_cohort(root)


def test_plausible_headers_still_load(tmp_path):
    root = write_ukbb_fixture(tmp_path, n=2)
    for name in ("sa_ED.nii.gz", "sa_ES.nii.gz", "seg_sa_ED.nii.gz", "seg_sa_ES.nii.gz"):
        _resave(root / FIRST / name, affine=np.diag([0.5, 0.5, 8.0, 1.0]))  # high resolution: fine
    assert len(read_cohort(root).subjects) == 2
    write_acdc_fixture(tmp_path / "lost", n=1, spacing_lost=True)  # no spacing at all: assumed later, not refused
    assert len(read_cohort(tmp_path / "lost" / "acdc").subjects) == 1


def test_train_refuses_before_writing_anything(tmp_path, capsys):
    root = write_ukbb_fixture(tmp_path / "data", n=4)
    _empty(root / FIRST / "seg_sa_ES.nii.gz")
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", tmp_path / "runs", "--data", root,
                                             "--stage", "vae"])
    assert_refused(code, err, ["seg_sa_ES.nii.gz", "ES mask is empty (background only)"])
    assert tree(tmp_path / "runs") == []
