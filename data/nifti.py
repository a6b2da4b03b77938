"""NIfTI volumes in and out, mask label maps, and the four checked volumes of one subject.

Every failure to read a user's file becomes an InputError naming the file, never a nibabel/zlib traceback.
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from data.atomic import atomic_write
from data.attributes import Attributes
from data.cohort import Subject
from data.errors import InputError, check_regular_file
from data.limits import check_shape, stream_size

Spacing = Optional[tuple[float, float, float]]
AFFINE_TOLERANCE = 1e-3  # mm; headers store float32, so equal affines can differ in the last digits
# In-plane voxel size of a cardiac MR volume, mm: outside it the header's unit or pixdim is wrong (a micron or metre
# unit scales 1.8 mm to 0.0018 or 1800 mm; preprocessing would crop a dot or a fraction of one voxel).
PLAUSIBLE_PIXEL_MM = (0.1, 20.0)
# Voxel axes are reordered and flipped to point this way (nearest world axes); a layout whose files are stored
# otherwise as standard passes its own (ACDC: LPS), so its standard files load exactly as stored.
ORIENTATION = "RAS"


def _to_3d(data: np.ndarray, path: Path) -> np.ndarray:
    """(X, Y) -> (X, Y, 1); (X, Y, Z, 1, ...) -> (X, Y, Z); anything else is an error."""
    if data.ndim == 2:
        return data[:, :, None]
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected 3D volume (X, Y, Z) (2D or a singleton 4th dimension also accepted), got shape {data.shape}")
    if data.size == 0:
        raise InputError(path, f"volume has no voxels (shape {data.shape})")
    return data


def _spacing(header, path: Path) -> Spacing:
    """Voxel size in mm from the header; None when units are unknown and pixdim is all 1 (spacing was lost)."""
    zooms = [float(z) for z in header.get_zooms()[:3]]
    zooms += [1.0] * (3 - len(zooms))  # a 2D image is one slice of unknown thickness
    spatial_unit = header.get_xyzt_units()[0]
    if spatial_unit == "unknown" and all(z == 1.0 for z in zooms):
        return None
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise InputError(path, f"invalid voxel spacing {tuple(zooms)} in header; expected positive numbers")
    scale = {"meter": 1000.0, "mm": 1.0, "micron": 0.001}.get(spatial_unit, 1.0)  # unknown units: NIfTI says mm
    return tuple(z * scale for z in zooms)


def _check_claimed_size(path: Path, image) -> None:
    """Refuse a header that claims more voxels than MAX_VOXELS, or more bytes than the file holds."""
    shape = tuple(int(n) for n in image.shape)
    check_shape(str(path), shape)
    header = image.header
    if not hasattr(header, "get_data_offset"):
        return
    needed = int(header.get_data_offset()) + math.prod(shape) * header.get_data_dtype().itemsize
    compressed = path.name.endswith(".gz")
    if compressed:
        with gzip.open(path, "rb") as stream:
            held = stream_size(stream, needed)
    else:
        held = path.stat().st_size
    if held < needed:
        raise InputError(path, f"cannot read NIfTI: truncated; the header claims shape {shape} ({needed:,} bytes) but "
                               f"the {'decompressed ' if compressed else ''}file holds {held:,} bytes")


def _first_bad_voxel(bad: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(bad)[0])


def _reorient(data: np.ndarray, affine: np.ndarray, spacing: Spacing, header, orientation: str,
              path: Path) -> tuple[np.ndarray, np.ndarray, Spacing]:
    """The volume with its voxel axes along `orientation` (e.g. "RAS": x towards Right, ...; nearest world axes),
    whatever order and flips the file stored them in; the affine follows, so the anatomy in mm is unchanged. A
    header without a qform or sform (codes 0), or whose spacing was lost (unknown units, unit pixdim: the affine
    is a placeholder), has no orientation: the data is kept as stored."""
    if spacing is None or (int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0):
        return data, affine, spacing
    current = io_orientation(affine)
    if np.isnan(current).any():
        raise InputError(path, "affine has a voxel axis with no direction (singular); expected an invertible affine")
    transform = ornt_transform(current, axcodes2ornt(tuple(orientation)))
    if (transform == [[0, 1], [1, 1], [2, 1]]).all():
        return data, affine, spacing  # already there: the usual case
    new_affine = affine @ inv_ornt_aff(transform, data.shape)
    if spacing is not None:
        moved = [0.0] * 3
        for old_axis, (new_axis, _) in enumerate(transform):
            moved[int(new_axis)] = spacing[old_axis]
        spacing = tuple(moved)
    return np.ascontiguousarray(apply_orientation(data, transform)), new_affine, spacing


def load_nifti(path: str | Path, is_mask: bool = False,
               orientation: str = ORIENTATION) -> tuple[np.ndarray, np.ndarray, Spacing]:
    """Read a NIfTI volume -> (data (X, Y, Z), affine (4, 4), spacing in mm or None), voxel axes reoriented to
    `orientation` (see _reorient): the same anatomy stored flipped or transposed gives the same array.

    Images come back float32 and must be finite; masks come back as integers (stored dtype when integral).
    """
    path = Path(path)
    check_regular_file(path, "a NIfTI file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty; expected a NIfTI volume (.nii or .nii.gz)")
    try:
        image = nib.load(str(path), mmap=False)  # reads the header only
    except Exception as err:
        raise InputError(path, f"cannot read NIfTI ({type(err).__name__}: {err}); the file is corrupt, truncated or not NIfTI") from None
    _check_claimed_size(path, image)  # before a voxel is decoded: the header's claims bound what is allocated
    try:
        # Force the data read here: truncated gzip only fails (EOFError, zlib.error) when voxels are decoded.
        data = np.asarray(image.dataobj) if is_mask else image.get_fdata(dtype=np.float32)
        affine = np.asarray(image.affine, dtype=np.float64)
        header = image.header
    except MemoryError:
        raise
    except Exception as err:
        raise InputError(path, f"cannot read NIfTI ({type(err).__name__}: {err}); the file is corrupt, truncated or not NIfTI") from None
    if not hasattr(header, "get_xyzt_units"):
        raise InputError(path, f"expected a NIfTI-1/2 file, got {type(image).__name__}")
    data = _to_3d(data, path)
    if not np.isfinite(affine).all():
        raise InputError(path, "affine contains NaN/Inf; the header is corrupt")
    if is_mask:
        data = _integer_mask(data, path)
    else:
        bad = ~np.isfinite(data)
        if bad.any():
            raise InputError(path, f"{int(bad.sum())} NaN/Inf voxel(s), first at {_first_bad_voxel(bad)}; expected finite intensities")
    return _reorient(data, affine, _spacing(header, path), header, orientation, path)


def _integer_mask(data: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(data.dtype, np.integer):
        return data
    bad = ~np.isfinite(data) | (data != np.round(data))
    if bad.any():
        raise InputError(path, f"mask has {int(bad.sum())} non-integer voxel(s), first at {_first_bad_voxel(bad)}; expected integer labels")
    return np.rint(data).astype(np.int32)


def save_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray, spatial_unit: str = "mm") -> None:
    """Write array (X, Y, Z) atomically: temp file in the same folder, then os.replace.

    spatial_unit="unknown" with an identity affine marks the spacing as lost (reads back as None).
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)
    elif array.dtype == np.int64:  # nibabel refuses int64 without an explicit on-disk type
        array = array.astype(np.int32)
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units(xyz=spatial_unit, t="sec")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix  # nibabel compresses by suffix
    atomic_write(path, lambda tmp: nib.save(image, tmp), suffix=suffix)


def apply_label_map(mask: np.ndarray, label_map: dict[int, int], where: str | Path) -> np.ndarray:
    """Map a layout's labels to the internal ones -> uint8 (X, Y, Z); unexpected labels are an error."""
    low, high = int(mask.min()), int(mask.max())
    # bincount finds the labels present in one pass (unique sorts); fall back for negative or huge values.
    present = np.flatnonzero(np.bincount(mask.ravel())) if 0 <= low and high < 2**16 else np.unique(mask)
    unexpected = [int(v) for v in present if int(v) not in label_map]
    if unexpected:
        raise InputError(where, f"unexpected mask label(s) {unexpected}; this layout declares labels {sorted(label_map)}")
    lookup = np.zeros(high + 1, dtype=np.uint8)
    for source, target in label_map.items():
        if 0 <= source <= high:
            lookup[source] = target
    return np.take(lookup, mask)


def _check_shapes(a: np.ndarray, b: np.ndarray, what: str, path_a: Path, path_b: Path) -> None:
    if a.shape != b.shape:
        raise InputError(path_b, f"{what} shape mismatch: {b.shape} here vs {a.shape} in {path_a}")


def _check_affines(a: np.ndarray, b: np.ndarray, what: str, path_a: Path, path_b: Path) -> None:
    if not np.allclose(a, b, rtol=0.0, atol=AFFINE_TOLERANCE):
        worst = float(np.abs(a - b).max())
        raise InputError(path_b, f"{what} affine mismatch with {path_a}: differs by up to {worst:.4g} (tolerance {AFFINE_TOLERANCE})")


def check_training_subject(seg_ed: np.ndarray, seg_es: np.ndarray, spacing: Spacing, label_map: dict[int, int],
                           image_ed: Path, mask_ed: Path, mask_es: Path) -> None:
    """Refuse what would give degenerate training slices (cohort readers skip it under skip_bad): a mask with no
    heart label, or an in-plane voxel size no cardiac MR volume has (the header's spatial unit or pixdim is wrong).
    sample.py's masks take the same checks in data/mask_input.py."""
    background = [label for label, internal in label_map.items() if internal == 0]
    for seg, path, phase in ((seg_ed, mask_ed, "ED"), (seg_es, mask_es, "ES")):
        if np.isin(seg, background).all():
            raise InputError(path, f"{phase} mask is empty (background only); expected LV, MYO and RV labels")
    if spacing is not None:
        lo, hi = PLAUSIBLE_PIXEL_MM
        if not all(lo <= s <= hi for s in spacing[:2]):
            raise InputError(image_ed, f"in-plane voxel size {spacing[0]:.4g} x {spacing[1]:.4g} mm; expected {lo:g} to "
                                       f"{hi:g} mm for cardiac MR: is the header's spatial unit (micron, meter) or "
                                       "pixdim wrong?")


def load_subject(subject_id: str, image_ed: Path, image_es: Path, mask_ed: Path, mask_es: Path,
                 label_map: dict[int, int], attributes: Attributes, source: Optional[Path] = None,
                 orientation: str = ORIENTATION) -> Subject:
    """Read and cross-check the four volumes of one patient (each reoriented to `orientation`); masks are mapped
    to the internal labels."""
    img_ed, affine, spacing = load_nifti(image_ed, orientation=orientation)
    img_es, affine_es, _ = load_nifti(image_es, orientation=orientation)
    seg_ed, affine_seg_ed, _ = load_nifti(mask_ed, is_mask=True, orientation=orientation)
    seg_es, affine_seg_es, _ = load_nifti(mask_es, is_mask=True, orientation=orientation)
    _check_shapes(img_ed, seg_ed, "image/mask", image_ed, mask_ed)
    _check_shapes(img_es, seg_es, "image/mask", image_es, mask_es)
    _check_shapes(img_ed, img_es, "ED/ES", image_ed, image_es)
    _check_affines(affine, affine_seg_ed, "image/mask", image_ed, mask_ed)
    _check_affines(affine_es, affine_seg_es, "image/mask", image_es, mask_es)
    _check_affines(affine, affine_es, "ED/ES", image_ed, image_es)
    check_training_subject(seg_ed, seg_es, spacing, label_map, image_ed, mask_ed, mask_es)
    return Subject(
        subject_id=subject_id,
        image_ed=img_ed,
        image_es=img_es,
        mask_ed=apply_label_map(seg_ed, label_map, mask_ed),
        mask_es=apply_label_map(seg_es, label_map, mask_es),
        affine=affine,
        spacing=spacing,
        attributes=attributes,
        source=source,
    )
