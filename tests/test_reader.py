import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from data.errors import InputError
from data.nifti import save_nifti
from data.reader import attributes_table, detect_layout, read_cohort
from tests.fixtures import FIXTURE_AFFINE, FIXTURE_SPACING, write_acdc_fixture, write_metadata_csv, write_ukbb_fixture

FIRST = "1000001"  # eid of the first fixture subject


def _raw(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_ukbb_round_trip_keeps_voxels_labels_geometry_and_metadata(tmp_path):
    root = write_ukbb_fixture(tmp_path, n=3)
    cohort = read_cohort(root)
    assert cohort.layout == "ukbb" and cohort.skipped == [] and cohort.root == root
    assert [s.subject_id for s in cohort.subjects] == ["1000001", "1000002", "1000003"]
    csv = pd.read_csv(root / "metadata.csv", dtype={"eid": str}).set_index("eid")
    for subject in cohort.subjects:
        folder = root / subject.subject_id
        np.testing.assert_array_equal(subject.image_ed, _raw(folder / "sa_ED.nii.gz"))
        np.testing.assert_array_equal(subject.image_es, _raw(folder / "sa_ES.nii.gz"))
        np.testing.assert_array_equal(subject.mask_ed, _raw(folder / "seg_sa_ED.nii.gz"))  # identity label map
        np.testing.assert_array_equal(subject.mask_es, _raw(folder / "seg_sa_ES.nii.gz"))
        assert subject.image_ed.dtype == np.float32 and subject.mask_ed.dtype == np.uint8
        assert set(np.unique(subject.mask_ed)) == {0, 1, 2, 3}
        np.testing.assert_allclose(subject.affine, FIXTURE_AFFINE, atol=1e-5)
        assert subject.spacing == pytest.approx(FIXTURE_SPACING)
        row = csv.loc[subject.subject_id]
        a = subject.attributes
        assert (a.sex, a.age, a.bmi, a.health) == (row.sex, pytest.approx(row.age), pytest.approx(row.bmi), row.health)
    table = attributes_table(cohort)
    assert list(table.columns) == ["subject_id", "sex", "age", "bmi", "health"]
    assert table.subject_id.tolist() == csv.index.tolist()
    np.testing.assert_allclose(table.age, csv.age)


def test_bmi_from_height_and_weight_and_ukbb_sex_codes(tmp_path):
    root = write_ukbb_fixture(tmp_path, n=2)
    write_metadata_csv(root / "metadata.csv", [
        {"eid": "1000001", "Sex": 0, "age": 50, "height": 180, "weight": 81, "health": "Heart failure"},
        {"eid": "1000002", "Sex": 1, "age": 61, "height": "", "weight": "", "health": ""},
    ])
    first, second = read_cohort(root).subjects
    assert first.attributes.bmi == pytest.approx(81 / 1.8 ** 2)
    assert (first.attributes.sex, first.attributes.health) == ("female", "heart_failure")
    assert (second.attributes.sex, second.attributes.bmi, second.attributes.health) == ("male", None, None)


def test_metadata_may_live_elsewhere(tmp_path):
    root = write_ukbb_fixture(tmp_path, n=2)
    moved = tmp_path / "meta.csv"
    (root / "metadata.csv").rename(moved)
    with pytest.raises(InputError, match="metadata CSV not found"):
        read_cohort(root)
    assert len(read_cohort(root, metadata=moved).subjects) == 2


def _rewrite(path, **changes):
    image = nib.load(str(path))
    data = changes.get("data", np.asarray(image.dataobj))
    save_nifti(path, data, changes.get("affine", image.affine))


def _set_voxel(path, value):
    data = np.asarray(nib.load(str(path)).dataobj).copy()
    data[1, 2, 0] = value
    _rewrite(path, data=data)


def _edit_csv(root, column, value):
    table = pd.read_csv(root / "metadata.csv", dtype=str)
    table.loc[table.eid == FIRST, column] = value
    table.to_csv(root / "metadata.csv", index=False)


def _truncate_gzip(path):
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])


SUBJECT_FAULTS = {  # name -> (break the first subject, text the error must contain)
    "missing file": (lambda d: (d / "sa_ES.nii.gz").unlink(), "sa_ES.nii.gz: file not found"),
    "empty file": (lambda d: (d / "seg_sa_ED.nii.gz").write_bytes(b""), "seg_sa_ED.nii.gz: file is empty"),
    "corrupt bytes": (lambda d: (d / "sa_ED.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 3), "sa_ED.nii.gz: cannot read"),
    "truncated gzip": (lambda d: _truncate_gzip(d / "sa_ED.nii.gz"), "sa_ED.nii.gz: cannot read"),
    "nan voxel": (lambda d: _set_voxel(d / "sa_ES.nii.gz", np.nan), "sa_ES.nii.gz: 1 NaN/Inf voxel(s), first at (1, 2, 0)"),
    "4d non-singleton": (lambda d: save_nifti(d / "sa_ED.nii.gz", np.zeros((32, 32, 4, 2), np.float32), FIXTURE_AFFINE),
                         "sa_ED.nii.gz: expected 3D"),
    "image/mask shape": (lambda d: save_nifti(d / "seg_sa_ED.nii.gz", np.zeros((32, 30, 4), np.uint8), FIXTURE_AFFINE),
                         "seg_sa_ED.nii.gz: image/mask shape mismatch"),
    "ED/ES shape": (lambda d: [save_nifti(d / f, np.zeros((32, 32, 3), t), FIXTURE_AFFINE)
                               for f, t in (("sa_ES.nii.gz", np.float32), ("seg_sa_ES.nii.gz", np.uint8))],
                    "sa_ES.nii.gz: ED/ES shape mismatch"),
    "image/mask affine": (lambda d: _rewrite(d / "seg_sa_ES.nii.gz", affine=FIXTURE_AFFINE + np.diag([0, 0, 0.01, 0])),
                          "seg_sa_ES.nii.gz: image/mask affine mismatch"),
    "unknown label": (lambda d: _set_voxel(d / "seg_sa_ES.nii.gz", 4), "seg_sa_ES.nii.gz: unexpected mask label(s) [4]"),
    "age -3": (lambda d: _edit_csv(d.parent, "age", "-3"), f"(eid {FIRST}): age: impossible value"),
    "BMI 400": (lambda d: _edit_csv(d.parent, "bmi", "400"), f"(eid {FIRST}): bmi: impossible value"),
    "age not a number": (lambda d: _edit_csv(d.parent, "age", "fifty"), f"(eid {FIRST}): age: expected a number"),
    "unknown sex": (lambda d: _edit_csv(d.parent, "sex", "X"), f"(eid {FIRST}): sex: unknown sex"),
    "unknown health": (lambda d: _edit_csv(d.parent, "health", "flu"), f"(eid {FIRST}): health: unknown health"),
    "no csv row": (lambda d: _edit_csv(d.parent, "eid", "999"), "has no row in"),
}


@pytest.mark.parametrize("fault", SUBJECT_FAULTS)
def test_bad_subject_raises_or_is_skipped_and_listed(tmp_path, fault):
    root = write_ukbb_fixture(tmp_path, n=2)
    breaker, expected = SUBJECT_FAULTS[fault]
    breaker(root / FIRST)
    with pytest.raises(InputError) as err:
        read_cohort(root)
    assert expected in str(err.value)
    cohort = read_cohort(root, skip_bad=True)
    assert [s.subject_id for s in cohort.subjects] == ["1000002"]
    skipped_ids = [sid for sid, _ in cohort.skipped]
    assert FIRST in skipped_ids and any(expected in why for _, why in cohort.skipped)


def test_csv_row_without_folder_is_an_error_or_skipped(tmp_path):
    root = write_ukbb_fixture(tmp_path, n=2)
    table = pd.read_csv(root / "metadata.csv", dtype=str)
    table.loc[len(table)] = ["2000000", "male", "50", "24", "healthy"]
    table.to_csv(root / "metadata.csv", index=False)
    with pytest.raises(InputError, match="eid 2000000: no subject folder"):
        read_cohort(root)
    cohort = read_cohort(root, skip_bad=True)
    assert len(cohort.subjects) == 2 and [sid for sid, _ in cohort.skipped] == ["2000000"]


CSV_FAULTS = {  # whole-file problems: raised even with skip_bad, since no row can be trusted
    "missing eid column": (lambda t: t.rename(columns={"eid": "id"}), "missing required column 'eid'"),
    "duplicate eid": (lambda t: pd.concat([t, t.iloc[:1]]), f"metadata.csv: eid: duplicate eid(s) ['{FIRST}']"),
    "height without weight": (lambda t: t.drop(columns="bmi").assign(height="170"), "needs both 'height'"),
}


@pytest.mark.parametrize("fault", CSV_FAULTS)
@pytest.mark.parametrize("skip_bad", [False, True])
def test_bad_csv_raises_naming_the_file_and_field(tmp_path, fault, skip_bad):
    root = write_ukbb_fixture(tmp_path, n=2)
    change, expected = CSV_FAULTS[fault]
    change(pd.read_csv(root / "metadata.csv", dtype=str)).to_csv(root / "metadata.csv", index=False)
    with pytest.raises(InputError) as err:
        read_cohort(root, skip_bad=skip_bad)
    assert "metadata.csv" in str(err.value) and expected in str(err.value)


def test_all_subjects_bad_is_an_error_even_when_skipping(tmp_path):
    root = write_ukbb_fixture(tmp_path, n=2)
    for eid in ("1000001", "1000002"):
        (root / eid / "sa_ED.nii.gz").unlink()
    with pytest.raises(InputError, match="no readable subject.*2 skipped"):
        read_cohort(root, skip_bad=True)


def test_layout_detection_and_unknown_layouts(tmp_path):
    assert detect_layout(write_ukbb_fixture(tmp_path / "u", n=1)) == "ukbb"
    assert detect_layout(write_acdc_fixture(tmp_path / "a", n=1)) == "acdc"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        read_cohort(tmp_path / "empty")
    for expected in ("no known cohort layout", "ukbb:", "sa_ED.nii.gz", "metadata.csv", "acdc:", "Info.cfg"):
        assert expected in str(err.value)
    with pytest.raises(InputError, match="unknown layout 'nifti'"):
        read_cohort(tmp_path / "empty", layout="nifti")
    with pytest.raises(InputError, match="cohort folder not found"):
        read_cohort(tmp_path / "nowhere")


def test_synthetic_cohort_round_trip(tmp_path):
    synthetic = pytest.importorskip("data.synthetic")
    root = synthetic.generate_cohort(tmp_path / "syn", n=3, seed=0, shape=(24, 24, 3))
    cohort = read_cohort(root)
    expected = synthetic.sample_metadata(3, seed=0)
    table = attributes_table(cohort)
    assert cohort.layout == "ukbb" and cohort.skipped == []
    assert table.subject_id.tolist() == expected.eid.astype(str).tolist()
    assert table.sex.tolist() == expected.sex.tolist() and table.health.tolist() == expected.health.tolist()
    np.testing.assert_allclose(table.age, expected.age)
    np.testing.assert_allclose(table.bmi, expected.bmi)
    for subject in cohort.subjects:
        np.testing.assert_array_equal(subject.image_es, _raw(root / subject.subject_id / "sa_ES.nii.gz"))
        np.testing.assert_array_equal(subject.mask_ed, _raw(root / subject.subject_id / "seg_sa_ED.nii.gz"))
        np.testing.assert_allclose(subject.spacing, np.linalg.norm(subject.affine[:3, :3], axis=0), rtol=1e-5)
