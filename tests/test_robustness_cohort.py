"""train.py against a bad cohort (UK Biobank or ACDC layout): one `error:` line naming the file, nothing written."""
import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import train
from data.nifti import save_nifti
from tests.fixtures import FIXTURE_AFFINE, write_acdc_fixture, write_ukbb_fixture
from tests.test_robustness import FIRST, SMOKE, assert_refused, call, tree


def _rewrite(path: Path, data=None, affine=None) -> None:
    image = nib.load(str(path))
    save_nifti(path, np.asarray(image.dataobj) if data is None else data, image.affine if affine is None else affine)


def _set_voxel(path: Path, value) -> None:
    data = np.asarray(nib.load(str(path)).dataobj).copy()
    data[1, 2, 0] = value
    _rewrite(path, data=data)


def _edit_csv(root: Path, column: str, value: str) -> None:
    table = pd.read_csv(root / "metadata.csv", dtype=str)
    table.loc[table.eid == FIRST, column] = value
    table.to_csv(root / "metadata.csv", index=False)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty_mask(path: Path) -> None:
    _rewrite(path, data=np.zeros(nib.load(str(path)).shape, np.uint8))


COHORT_FAULTS = {  # name -> (break the cohort at root, fragments of the error line)
    "missing NIfTI": (lambda r: (r / FIRST / "sa_ES.nii.gz").unlink(), ["sa_ES.nii.gz", "file not found"]),
    "empty NIfTI": (lambda r: (r / FIRST / "seg_sa_ED.nii.gz").write_bytes(b""), ["seg_sa_ED.nii.gz", "file is empty"]),
    "corrupt NIfTI": (lambda r: (r / FIRST / "sa_ED.nii.gz").write_bytes(gzip.compress(b"not a nifti" * 40)),
                      ["sa_ED.nii.gz", "cannot read NIfTI"]),
    "truncated gzip": (lambda r: _truncate(r / FIRST / "sa_ED.nii.gz"), ["sa_ED.nii.gz", "cannot read NIfTI", "truncated"]),
    "NaN voxel": (lambda r: _set_voxel(r / FIRST / "sa_ES.nii.gz", np.nan), ["sa_ES.nii.gz", "NaN/Inf voxel", "(1, 2, 0)"]),
    "Inf voxel": (lambda r: _set_voxel(r / FIRST / "sa_ED.nii.gz", np.inf), ["sa_ED.nii.gz", "NaN/Inf voxel"]),
    "4D volume": (lambda r: save_nifti(r / FIRST / "sa_ED.nii.gz", np.zeros((32, 32, 4, 2), np.float32), FIXTURE_AFFINE),
                  ["sa_ED.nii.gz", "expected 3D volume", "(32, 32, 4, 2)"]),
    "image/mask shape": (lambda r: save_nifti(r / FIRST / "seg_sa_ED.nii.gz", np.zeros((32, 30, 4), np.uint8),
                                              FIXTURE_AFFINE),
                         ["seg_sa_ED.nii.gz", "image/mask shape mismatch"]),
    "image/mask affine": (lambda r: _rewrite(r / FIRST / "seg_sa_ES.nii.gz",
                                             affine=FIXTURE_AFFINE + np.diag([0, 0, 0.5, 0])),
                          ["seg_sa_ES.nii.gz", "image/mask affine mismatch"]),
    "label outside the map": (lambda r: _set_voxel(r / FIRST / "seg_sa_ES.nii.gz", 7),
                              ["seg_sa_ES.nii.gz", "unexpected mask label(s) [7]", "declares labels [0, 1, 2, 3]"]),
    "empty mask": (lambda r: _empty_mask(r / FIRST / "seg_sa_ED.nii.gz"),
                   [f"cohort/{FIRST}/seg_sa_ED.nii.gz", "ED mask is empty (background only)"]),
    "CSV missing": (lambda r: (r / "metadata.csv").unlink(), ["metadata.csv", "not found", "expected columns eid"]),
    "CSV not text": (lambda r: (r / "metadata.csv").write_bytes(bytes(range(256)) * 4),
                     ["metadata.csv", "cannot parse CSV"]),
    "CSV missing column": (lambda r: pd.read_csv(r / "metadata.csv").rename(columns={"eid": "id"}).to_csv(
        r / "metadata.csv", index=False), ["metadata.csv", "missing required column 'eid'"]),
    "CSV wrong type": (lambda r: _edit_csv(r, "age", "fifty"), ["metadata.csv", f"eid {FIRST}", "age", "expected a number"]),
    "CSV duplicate ids": (lambda r: pd.concat([pd.read_csv(r / "metadata.csv", dtype=str)] * 2).to_csv(
        r / "metadata.csv", index=False), ["metadata.csv", "duplicate eid"]),
    "CSV impossible age": (lambda r: _edit_csv(r, "age", "-3"), [f"eid {FIRST}", "age", "impossible value"]),
    "CSV impossible BMI": (lambda r: _edit_csv(r, "bmi", "400"), [f"eid {FIRST}", "bmi", "impossible value"]),
    "CSV health outside vocabulary": (lambda r: _edit_csv(r, "health", "flu"), [f"eid {FIRST}", "health", "flu"]),
    "CSV eid is a path": (lambda r: _edit_csv(r, "eid", "../ukbb/1000002"), ["metadata.csv: eid", "not folder names"]),
    "CSV eid is absolute": (lambda r: _edit_csv(r, "eid", "/etc"), ["metadata.csv: eid", "not folder names"]),
    "no cohort layout": (lambda r: [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in r.iterdir()],
                         ["no known cohort layout", "ukbb:", "acdc:"]),
}
ACDC_FAULTS = {
    "Info.cfg unknown group": (lambda r: (r / "patient001" / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: FLU\n"),
                               ["Info.cfg: Group", "unknown group 'FLU'", "DCM"]),
    "Info.cfg frame outside NbFrame": (lambda r: (r / "patient001" / "Info.cfg").write_text(
        "ED: 1\nES: 40\nGroup: NOR\nNbFrame: 15\n"), ["Info.cfg: ES", "frame 40 outside 1..15"]),
}


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohorts")
    return {"ukbb": write_ukbb_fixture(folder, n=3), "acdc": write_acdc_fixture(folder, n=2)}


@pytest.mark.parametrize("layout, fault", [("ukbb", f) for f in COHORT_FAULTS] + [("acdc", f) for f in ACDC_FAULTS])
def test_train_refuses_a_bad_cohort_and_writes_nothing(cohorts, tmp_path, capsys, layout, fault):
    root = Path(shutil.copytree(cohorts[layout], tmp_path / "cohort"))
    breaker, fragments = {**COHORT_FAULTS, **ACDC_FAULTS}[fault]
    breaker(root)
    before = tree(root)
    runs = tmp_path / "runs"
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", runs, "--stage", "vae", "--data", root])
    assert_refused(code, err, fragments)
    assert not runs.exists(), tree(runs)  # no half-made run folder
    assert tree(root) == before  # the cohort is only read


def test_missing_cohort_folder(tmp_path, capsys):
    code, _, err = call(capsys, train.main, ["--config", SMOKE, "--runs", tmp_path / "runs", "--data", tmp_path / "nope"])
    assert_refused(code, err, ["nope", "cohort folder not found"])
    assert not (tmp_path / "runs").exists()
