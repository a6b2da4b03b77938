"""Issue 18, class 4: NIfTI orientation. The one reader (data/nifti.py:load_nifti) reorients every volume's voxel
axes to one orientation from its affine (RAS; the ACDC layout LPS, as the ACDC release stores every file), so the
same anatomy stored flipped or transposed, with an affine that compensates, gives the same arrays everywhere."""
import nibabel as nib
import numpy as np
import pytest

from data.acdc import read_acdc
from data.errors import InputError
from data.mask_input import load_control_masks
from data.nifti import load_nifti, save_nifti
from data.preprocess import PreprocessConfig
from data.ukbb import read_ukbb
from tests.fixtures import ACDC_AFFINE, FIXTURE_AFFINE, heart_image, heart_mask, write_acdc_fixture, write_ukbb_fixture

ANISOTROPIC = FIXTURE_AFFINE @ np.diag([1.0, 1.25, 1.0, 1.0])  # x and y spacing differ: a transpose must show


def _flip(axis: int, n: int) -> np.ndarray:
    """Voxel index map i -> n - 1 - i on `axis`, as a (4, 4) matrix."""
    matrix = np.eye(4)
    matrix[axis, axis], matrix[axis, 3] = -1.0, n - 1
    return matrix


SWAP_XY = np.eye(4)[[1, 0, 2, 3]]
VARIANTS = {  # name -> (stored array from the plain one, affine of the stored array from the plain affine)
    "x-flipped": (lambda a: a[::-1], lambda aff, s: aff @ _flip(0, s[0])),
    "y-flipped": (lambda a: a[:, ::-1], lambda aff, s: aff @ _flip(1, s[1])),
    "z-flipped": (lambda a: a[:, :, ::-1], lambda aff, s: aff @ _flip(2, s[2])),
    "transposed": (lambda a: a.transpose(1, 0, 2), lambda aff, s: aff @ SWAP_XY),
    "transposed+flipped": (lambda a: a.transpose(1, 0, 2)[::-1, :, ::-1],
                           lambda aff, s: aff @ SWAP_XY @ _flip(0, s[1]) @ _flip(2, s[2])),
}


def _store(path, plain, affine, variant):
    data_of, affine_of = VARIANTS[variant]
    save_nifti(path, np.ascontiguousarray(data_of(plain)), affine_of(affine, plain.shape))
    return path


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    mask = heart_mask((24, 20, 4), rng)  # not square: a transpose changes the shape
    return mask, heart_image(mask, rng)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("orientation, affine", [("RAS", ANISOTROPIC), ("LPS", np.diag([-1, -1, 1, 1]) @ ANISOTROPIC)])
def test_a_volume_stored_flipped_or_transposed_reads_as_the_plain_one(tmp_path, volume, variant, orientation, affine):
    mask, image = volume
    save_nifti(tmp_path / "plain.nii.gz", mask, affine)
    plain = load_nifti(tmp_path / "plain.nii.gz", is_mask=True, orientation=orientation)
    stored = load_nifti(_store(tmp_path / "v.nii.gz", mask, affine, variant), is_mask=True, orientation=orientation)
    assert np.array_equal(plain[0], mask)  # the plain file is already in its orientation: read as stored
    assert np.array_equal(stored[0], plain[0]) and stored[0].shape == mask.shape
    assert np.allclose(stored[1], plain[1], atol=1e-4) and np.allclose(stored[2], plain[2])  # affine, spacing
    save_nifti(tmp_path / "image.nii.gz", image, affine)
    assert np.array_equal(load_nifti(_store(tmp_path / "vi.nii.gz", image, affine, variant), orientation=orientation)[0],
                          load_nifti(tmp_path / "image.nii.gz", orientation=orientation)[0])


def test_an_oblique_affine_keeps_its_nearest_axes(tmp_path, volume):
    angle = np.deg2rad(25)  # a short-axis plane is oblique; 25 degrees keeps the nearest world axes
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    save_nifti(tmp_path / "m.nii.gz", volume[0], rotation @ ANISOTROPIC)
    assert np.array_equal(load_nifti(tmp_path / "m.nii.gz", is_mask=True)[0], volume[0])


def test_files_without_an_orientation_are_kept_as_stored(tmp_path, volume):
    save_nifti(tmp_path / "lost.nii.gz", volume[0][::-1], np.diag([-1.0, 1, 1, 1]), spatial_unit="unknown")
    assert np.array_equal(load_nifti(tmp_path / "lost.nii.gz", is_mask=True)[0], volume[0][::-1])  # spacing lost
    image = nib.Nifti1Image(volume[0][::-1].astype(np.int16), np.diag([-1.8, 1.8, 8, 1]))
    image.set_sform(None, code=0)
    image.set_qform(None, code=0)  # no qform, no sform: nibabel's fallback affine means nothing
    nib.save(image, tmp_path / "codes0.nii.gz")
    assert np.array_equal(load_nifti(tmp_path / "codes0.nii.gz", is_mask=True)[0], volume[0][::-1])


def test_a_singular_affine_is_refused(tmp_path, volume):
    image = nib.Nifti1Image(volume[0].astype(np.int16), None)
    image.set_sform(np.diag([1.8, 0.0, 8.0, 1.0]), code=2)  # an sform nibabel cannot turn into a qform
    image.set_qform(None, code=0)
    image.header.set_xyzt_units("mm")
    nib.save(image, tmp_path / "flat.nii.gz")
    with pytest.raises(InputError, match="flat.nii.gz: affine has a voxel axis with no direction"):
        load_nifti(tmp_path / "flat.nii.gz", is_mask=True)


@pytest.mark.parametrize("variant", ["x-flipped", "transposed+flipped"])
def test_a_cohort_subject_stored_otherwise_gives_the_same_subject(tmp_path, variant):
    plain_root, other_root = write_ukbb_fixture(tmp_path / "a", n=1), write_ukbb_fixture(tmp_path / "b", n=1)
    for path in sorted(other_root.glob("*/*.nii.gz")):
        data = np.asarray(nib.load(str(path)).dataobj)
        _store(path, data, FIXTURE_AFFINE, variant)
    plain, other = read_ukbb(plain_root)[0][0], read_ukbb(other_root)[0][0]
    for name in ("image_ed", "image_es", "mask_ed", "mask_es"):
        assert np.array_equal(getattr(plain, name), getattr(other, name)), name
    assert plain.spacing == pytest.approx(other.spacing)


def test_an_acdc_subject_stored_x_flipped_gives_the_same_subject(tmp_path):
    plain_root, other_root = write_acdc_fixture(tmp_path / "a", n=1), write_acdc_fixture(tmp_path / "b", n=1)
    for path in sorted(other_root.glob("*/*.nii.gz")):
        _store(path, np.asarray(nib.load(str(path)).dataobj), ACDC_AFFINE, "x-flipped")
    plain, other = read_acdc(plain_root)[0][0], read_acdc(other_root)[0][0]
    assert np.array_equal(plain.mask_ed, other.mask_ed) and np.array_equal(plain.image_es, other.image_es)


@pytest.mark.parametrize("variant", ["x-flipped", "transposed"])
def test_sample_control_masks_do_not_depend_on_the_stored_orientation(tmp_path, volume, variant):
    mask = volume[0]
    save_nifti(tmp_path / "plain.nii.gz", mask, FIXTURE_AFFINE)
    _store(tmp_path / "other.nii.gz", mask, FIXTURE_AFFINE, variant)
    cfg = PreprocessConfig(size=32, crop_mm=64.0)
    assert np.array_equal(load_control_masks(tmp_path / "plain.nii.gz", None, cfg),
                          load_control_masks(tmp_path / "other.nii.gz", None, cfg))
