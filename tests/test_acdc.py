import os
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data.acdc import GROUP_TO_HEALTH, LABEL_MAP, read_info
from data.cohort import LV, MYO, RV
from data.errors import InputError
from data.reader import attributes_table, read_cohort
from tests.fixtures import FIXTURE_SPACING, write_acdc_fixture


def _raw(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_fixture_loads_with_internal_labels_health_and_bmi(tmp_path):
    root = write_acdc_fixture(tmp_path, n=2, ed=1, es=12)
    cohort = read_cohort(root)
    assert cohort.layout == "acdc" and [s.subject_id for s in cohort.subjects] == ["patient001", "patient002"]
    for subject, group in zip(cohort.subjects, ("DCM", "HCM")):
        folder = root / subject.subject_id
        raw_es = _raw(folder / f"{subject.subject_id}_frame12_gt.nii.gz")  # ES=12 -> zero-padded frame12
        # ACDC 1 RV, 2 MYO, 3 LV -> internal 3 RV, 2 MYO, 1 LV.
        assert (subject.mask_es[raw_es == 1] == RV).all() and (subject.mask_es[raw_es == 3] == LV).all()
        assert (subject.mask_es[raw_es == 2] == MYO).all() and (subject.mask_es[raw_es == 0] == 0).all()
        np.testing.assert_array_equal(subject.image_ed, _raw(folder / f"{subject.subject_id}_frame01.nii.gz"))
        info = read_info(folder / "Info.cfg")
        a = subject.attributes
        assert a.health == GROUP_TO_HEALTH[group] and a.sex is None and a.age is None
        assert a.bmi == pytest.approx(float(info["Weight"]) / (float(info["Height"]) / 100) ** 2)
        assert subject.spacing == pytest.approx(FIXTURE_SPACING)


def test_lost_spacing_gives_none(tmp_path):
    root = write_acdc_fixture(tmp_path, n=1, spacing_lost=True)
    (subject,) = read_cohort(root, layout="acdc").subjects
    assert subject.spacing is None and subject.attributes.bmi is not None
    np.testing.assert_array_equal(subject.affine, np.eye(4))


@pytest.mark.parametrize("key", ["Height", "Weight"])
def test_missing_height_or_weight_names_the_file_or_is_skipped(tmp_path, key):
    root = write_acdc_fixture(tmp_path, n=2)
    cfg = root / "patient002" / "Info.cfg"
    cfg.write_text("\n".join(line for line in cfg.read_text().splitlines() if not line.startswith(key)))
    with pytest.raises(InputError, match=f"patient002/Info.cfg: {key}: missing field {key}"):
        read_cohort(root)
    cohort = read_cohort(root, skip_bad=True)
    assert [s.subject_id for s in cohort.subjects] == ["patient001"]
    assert cohort.skipped[0][0] == "patient002" and key in cohort.skipped[0][1]


def test_training_and_testing_folders_read_as_one_cohort(tmp_path):
    root = write_acdc_fixture(tmp_path / "a", n=3)
    user = tmp_path / "ACDC"
    (user / "training").mkdir(parents=True)
    (user / "testing").mkdir()
    for name, sub in (("patient001", "training"), ("patient002", "training"), ("patient003", "testing")):
        (root / name).rename(user / sub / name)
    cohort = read_cohort(user)
    assert cohort.layout == "acdc" and [s.subject_id for s in cohort.subjects] == ["patient001", "patient002", "patient003"]
    (user / "testing" / "patient001").mkdir()
    with pytest.raises(InputError, match="patient001 found twice"):
        read_cohort(user)


@pytest.mark.parametrize("info,expected", [
    ("ES: 12\nGroup: DCM\n", "Info.cfg: ED: missing field ED"),
    ("ED: one\nES: 12\nGroup: DCM\n", "Info.cfg: ED: expected a frame number"),
    ("ED: 1\nES: 40\nGroup: DCM\nNbFrame: 30\n", "Info.cfg: ES: frame 40 outside 1..30"),
    ("ED: 1\nES: 12\nGroup: XYZ\n", "Info.cfg: Group: unknown group 'XYZ'"),
    ("ED: 1\nES: 12\nGroup: DCM\nHeight: 18.4\nWeight: 95\n", "Info.cfg: height: impossible value"),
    ("ED 1\n", "Info.cfg: line 1: expected 'Key: value'"),
    ("ED: 1\nES: 12\nGroup: DCM\nWeight: 95\n", "Info.cfg: Height: missing field Height"),
    ("ED: 1\nES: 2\nGroup: DCM\nHeight: 184\nWeight: 95\n", "patient001_frame02.nii.gz: file not found"),
])
def test_bad_info_cfg_names_file_and_field(tmp_path, info, expected):
    root = write_acdc_fixture(tmp_path, n=2, ed=1, es=12)
    (root / "patient001" / "Info.cfg").write_text(info)
    with pytest.raises(InputError) as err:
        read_cohort(root)
    assert expected in str(err.value)
    cohort = read_cohort(root, skip_bad=True)
    assert [s.subject_id for s in cohort.subjects] == ["patient002"] and cohort.skipped[0][0] == "patient001"


def test_acdc_label_outside_map_and_metadata_argument_are_errors(tmp_path):
    root = write_acdc_fixture(tmp_path, n=1)
    with pytest.raises(InputError, match="Info.cfg"):
        read_cohort(root, metadata=root / "metadata.csv")
    assert set(LABEL_MAP) == {0, 1, 2, 3} and sorted(LABEL_MAP.values()) == [0, 1, 2, 3]


def _shared_acdc() -> Path:
    return Path(os.environ.get("CARDIAC_LDM_ACDC", Path(__file__).resolve().parents[2] / "shared/data/acdc"))


@pytest.mark.slow
def test_shared_acdc_copy_loads_all_100_patients_with_bmi_and_spacing():
    root = _shared_acdc()
    if not root.is_dir():
        pytest.skip(f"shared ACDC copy not found at {root} (set CARDIAC_LDM_ACDC to its folder)")
    cohort = read_cohort(root, layout="acdc")
    assert len(cohort.subjects) == 100 and cohort.skipped == []
    assert Counter(s.attributes.health for s in cohort.subjects) == {h: 20 for h in GROUP_TO_HEALTH.values()}
    table = attributes_table(cohort)
    assert table[["sex", "age"]].isna().all().all()  # ACDC has neither: absent, not invented
    assert table["bmi"].between(15.0, 37.0).all()  # README of the shared copy: BMI 15.4-36.8
    for subject in cohort.subjects:
        assert subject.spacing is not None and 0.5 <= subject.spacing[0] <= 2.0 and 4.0 <= subject.spacing[2] <= 10.5
        assert subject.image_ed.shape == subject.mask_ed.shape == subject.mask_es.shape and subject.image_ed.ndim == 3
        for mask in (subject.mask_ed, subject.mask_es):
            assert set(np.unique(mask)) <= {0, 1, 2, 3} and (mask == LV).any() and (mask == MYO).any()
        # Mapping check that a swapped LV/RV map would fail: the blood pool is enclosed by myocardium,
        # so the LV touches background far less than the RV does.
        m = subject.mask_ed
        lv_edge = ((m[1:] == LV) & (m[:-1] == 0)).sum() + ((m[:-1] == LV) & (m[1:] == 0)).sum()
        rv_edge = ((m[1:] == RV) & (m[:-1] == 0)).sum() + ((m[:-1] == RV) & (m[1:] == 0)).sum()
        assert lv_edge <= rv_edge or rv_edge == 0


def test_shared_acdc_crop_uses_the_true_spacing():
    root = _shared_acdc()
    if not root.is_dir():
        pytest.skip(f"shared ACDC copy not found at {root} (set CARDIAC_LDM_ACDC to its folder)")
    from data.acdc import load_patient
    from data.preprocess import PreprocessConfig, preprocess_subject

    cfg = PreprocessConfig(size=64, crop_mm=128.0, all_lv_slices=True)
    for name in ("patient001", "patient090"):  # in-plane spacings differ between scanners
        subject = load_patient(root / name)
        pixel_mm2 = float(subject.spacing[0] * subject.spacing[1])
        for sample in preprocess_subject(subject, cfg)[2:4]:
            raw_mm2 = (subject.mask_ed[:, :, sample.slice_index] == LV).sum() * pixel_mm2
            crop_mm2 = (sample.mask[0] == LV).sum() * (cfg.crop_mm / cfg.size) ** 2
            assert crop_mm2 == pytest.approx(raw_mm2, rel=0.1)  # nearest-neighbour resampling of a ~1000 mm^2 pool
