import gzip

import nibabel as nib
import numpy as np
import pytest

from data.errors import InputError
from data.nifti import apply_label_map, load_nifti, save_nifti


def _rotated_affine(spacing=(1.5, 2.0, 6.0), angle=0.3):
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = (10.0, -4.0, 2.5)
    return affine


def test_round_trip_keeps_values_affine_and_spacing(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(8, 6, 3)).astype(np.float32)
    affine = _rotated_affine()
    save_nifti(tmp_path / "v.nii.gz", volume, affine)
    data, read_affine, spacing = load_nifti(tmp_path / "v.nii.gz")
    assert data.dtype == np.float32 and data.shape == (8, 6, 3)
    np.testing.assert_array_equal(data, volume)
    np.testing.assert_allclose(read_affine, affine, atol=1e-5)
    # Spacing is the length of each affine column, whatever the rotation.
    np.testing.assert_allclose(spacing, np.linalg.norm(affine[:3, :3], axis=0), rtol=1e-6)


def test_save_is_compressed_overwrites_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "m.nii.gz"
    save_nifti(path, np.zeros((4, 4, 2), dtype=np.uint8), np.eye(4))
    save_nifti(path, np.full((4, 4, 2), 3, dtype=np.int64), np.eye(4))
    with gzip.open(path) as f:  # a real gzip stream, i.e. nibabel compressed the temp file
        f.read(10)
    assert [p.name for p in tmp_path.iterdir()] == ["m.nii.gz"]
    mask, _, _ = load_nifti(path, is_mask=True)
    assert np.issubdtype(mask.dtype, np.integer) and (mask == 3).all()


def test_lost_spacing_reads_as_none_but_unknown_units_with_real_pixdim_do_not(tmp_path):
    save_nifti(tmp_path / "lost.nii.gz", np.zeros((4, 4, 2), np.float32), np.eye(4), spatial_unit="unknown")
    save_nifti(tmp_path / "kept.nii.gz", np.zeros((4, 4, 2), np.float32), np.diag([2.0, 2.0, 5.0, 1.0]), spatial_unit="unknown")
    save_nifti(tmp_path / "unit.nii.gz", np.zeros((4, 4, 2), np.float32), np.eye(4))
    assert load_nifti(tmp_path / "lost.nii.gz")[2] is None
    assert load_nifti(tmp_path / "kept.nii.gz")[2] == pytest.approx((2.0, 2.0, 5.0))
    assert load_nifti(tmp_path / "unit.nii.gz")[2] == pytest.approx((1.0, 1.0, 1.0))


def test_2d_gets_one_slice_and_singleton_4th_dim_is_squeezed(tmp_path):
    plane = np.arange(12, dtype=np.float32).reshape(4, 3)
    nib.save(nib.Nifti1Image(plane, np.eye(4)), tmp_path / "2d.nii.gz")
    nib.save(nib.Nifti1Image(plane[:, :, None, None].repeat(2, axis=2), np.eye(4)), tmp_path / "4d.nii.gz")
    data2d, _, _ = load_nifti(tmp_path / "2d.nii.gz")
    data4d, _, _ = load_nifti(tmp_path / "4d.nii.gz")
    np.testing.assert_array_equal(data2d[..., 0], plane)
    assert data2d.shape == (4, 3, 1) and data4d.shape == (4, 3, 2)


def _write_bad(kind, path):
    good = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":
        path.write_bytes(np.random.default_rng(1).bytes(600))
    elif kind == "truncated_gzip":
        nib.save(nib.Nifti1Image(good, np.eye(4)), path)
        payload = path.read_bytes()
        path.write_bytes(payload[: len(payload) // 2])
    elif kind == "nan":
        good[2, 3, 1] = np.nan
        nib.save(nib.Nifti1Image(good, np.eye(4)), path)
    elif kind == "inf":
        good[0, 0, 0] = np.inf
        nib.save(nib.Nifti1Image(good, np.eye(4)), path)
    elif kind == "4d":
        nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 3), np.float32), np.eye(4)), path)


@pytest.mark.parametrize("kind,problem", [
    ("missing", "not found"),
    ("empty", "empty"),
    ("corrupt", "cannot read"),
    ("truncated_gzip", "cannot read"),
    ("nan", "NaN/Inf voxel(s), first at (2, 3, 1)"),
    ("inf", "first at (0, 0, 0)"),
    ("4d", "expected 3D"),
])
def test_bad_files_raise_input_error_naming_the_file(tmp_path, kind, problem):
    path = tmp_path / f"bad_{kind}.nii.gz"
    _write_bad(kind, path)
    with pytest.raises(InputError) as err:
        load_nifti(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_non_integer_mask_is_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.full((3, 3, 2), 1.5, np.float32), np.eye(4)), tmp_path / "m.nii.gz")
    with pytest.raises(InputError, match="non-integer"):
        load_nifti(tmp_path / "m.nii.gz", is_mask=True)


def test_label_map_permutes_labels_and_rejects_undeclared_ones():
    acdc_to_internal = {0: 0, 1: 3, 2: 2, 3: 1}
    mask = np.random.default_rng(0).integers(0, 4, size=(5, 5, 3))
    mapped = apply_label_map(mask, acdc_to_internal, "m.nii.gz")
    assert mapped.dtype == np.uint8
    for source, target in acdc_to_internal.items():
        assert (mapped[mask == source] == target).all()
    mask[1, 1, 1], mask[2, 2, 2] = 7, 5
    with pytest.raises(InputError, match=r"m\.nii\.gz: unexpected mask label\(s\) \[5, 7\]"):
        apply_label_map(mask, acdc_to_internal, "m.nii.gz")
