"""User segmentation masks -> control masks (2, S, S) for sampling, through the SAME preprocessing as training.

Accepted files (one for ED, one for ES):
  - NIfTI (.nii / .nii.gz), 2D or 3D, labels declared by `labels`: "ukbb" (1 LV, 2 MYO, 3 RV) or
    "acdc" (1 RV, 2 MYO, 3 LV); mapped with the reader's label map. The voxel spacing comes from the header.
  - PNG label image, greyscale: values 0..3 directly, or the grey levels 0/85/170/255 (value = grey / 85);
    those values are then read in the `labels` convention too. PNG rows are the first array axis (as in the
    PNGs this tool writes) and one PNG pixel is taken as crop_mm / size mm, i.e. drawn on the model's grid.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from data import acdc, ukbb
from data.attributes import Attributes
from data.cohort import LV, MYO, RV, Subject
from data.errors import InputError, check_regular_file
from data.limits import MAX_PIXELS, check_shape
from data.nifti import ORIENTATION, load_nifti
from data.preprocess import PreprocessConfig, lv_slices, preprocess_subject

LABEL_MAPS = {"ukbb": ukbb.LABEL_MAP, "acdc": acdc.LABEL_MAP}
ORIENTATIONS = {"ukbb": ORIENTATION, "acdc": acdc.ORIENTATION}  # as the layout's cohort reader reorients
LABEL_MEANINGS = {"ukbb": "0 background, 1 LV blood pool, 2 LV myocardium, 3 RV",
                  "acdc": "0 background, 1 RV, 2 LV myocardium, 3 LV blood pool"}
PNG_GREY_LEVELS = (0, 85, 170, 255)  # label k drawn as grey k * 85


def _read_png(path: Path) -> np.ndarray:
    """Greyscale PNG -> integer label values (X, Y, 1); grey levels 0/85/170/255 become 0..3."""
    check_regular_file(path, "a PNG file")
    try:
        with Image.open(path) as image:  # reads the header only
            check_shape(str(path), image.size[::-1], MAX_PIXELS, "pixels")  # before a pixel is decoded
            image.load()
            mode = image.mode
            data = np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(path, f"cannot read PNG ({type(err).__name__}: {err}); the file is corrupt or not a PNG") from None
    if data.ndim == 3 and mode.endswith(("A", "a")):  # grey or colour + alpha: the alpha must be opaque
        alpha = data[..., -1]
        if np.any(alpha != alpha.max()) or (alpha.dtype == np.uint8 and alpha.max() != 255):
            raise InputError(path, f"PNG with transparent pixels (mode {mode}); expected an opaque greyscale label "
                                   "image")
        data = data[..., :-1]
    if data.ndim == 3:  # RGB holding grey: all colour channels equal
        if not (np.all(data == data[..., :1])):
            raise InputError(path, f"colour PNG (mode {mode}); expected a greyscale label image (values 0..3 or grey 0/85/170/255)")
        data = data[..., 0]
    values = sorted(int(v) for v in np.unique(data))
    if set(values) <= {0, 1, 2, 3}:
        labels = data.astype(np.int32)
    elif set(values) <= set(PNG_GREY_LEVELS):
        labels = (data // 85).astype(np.int32)
    else:
        raise InputError(path, f"PNG values {_short(values)}; expected label values "
                               f"0..3 or grey levels {'/'.join(map(str, PNG_GREY_LEVELS))}")
    return labels[:, :, None]


def read_mask_file(path: str | Path, labels: str = "ukbb", crop_mm: float = 128.0,
                   size: int = 64) -> tuple[np.ndarray, Optional[tuple[float, float, float]], np.ndarray]:
    """One mask file -> (internal labels (X, Y, Z) uint8, spacing mm or None, affine (4, 4))."""
    path = Path(path)
    if labels not in LABEL_MAPS:
        raise InputError("labels", f"unknown label convention {labels!r}; expected one of {', '.join(LABEL_MAPS)}")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        raw, affine, spacing = load_nifti(path, is_mask=True, orientation=ORIENTATIONS[labels])
    elif name.endswith(".png"):
        raw = _read_png(path)
        pixel = crop_mm / size
        spacing, affine = (pixel, pixel, 1.0), np.diag([pixel, pixel, 1.0, 1.0])
    else:
        raise InputError(path, "unknown mask format; expected a NIfTI (.nii, .nii.gz) or PNG (.png) label image")
    return _map_labels(raw, labels, path), spacing, affine


def _short(values: list[int]) -> str:
    return ", ".join(map(str, values)) if len(values) <= 8 else f"{', '.join(map(str, values[:6]))}, ..., {values[-1]}"


def _map_labels(raw: np.ndarray, labels: str, path: Path) -> np.ndarray:
    label_map = LABEL_MAPS[labels]
    found = sorted(int(v) for v in np.unique(raw))
    unexpected = [v for v in found if v not in label_map]
    if len(unexpected) > 6:
        raise InputError(path, f"{len(found)} distinct values ({_short(found)}); expected a label mask in the {labels} "
                               f"map ({LABEL_MEANINGS[labels]}); is this an image rather than a segmentation?")
    if unexpected:
        raise InputError(path, f"mask labels {found} include {unexpected}, not in the {labels} label map "
                               f"({LABEL_MEANINGS[labels]}); pass --labels to declare the convention")
    lookup = np.zeros(max(found) + 1, dtype=np.uint8)
    for source, target in label_map.items():
        if source < len(lookup):
            lookup[source] = target
    return lookup[raw]


def _ring_fraction(mask: np.ndarray, label: int) -> float:
    """Share of the 1-pixel ring around `label` (over all slices) that is myocardium."""
    inside = mask == label
    ring = ndimage.binary_dilation(inside, structure=np.ones((3, 3, 1), bool)) & ~inside
    return float((mask[ring] == MYO).mean()) if ring.any() else 0.0


def warn_if_swapped(mask: np.ndarray, labels: str, where: Path) -> None:
    """The myocardium rings the LV blood pool, not the RV: if it is the other way round, the convention is wrong."""
    if not ((mask == LV).any() and (mask == RV).any()):
        return
    if _ring_fraction(mask, RV) > 0.8 and _ring_fraction(mask, LV) < 0.5:
        other = "acdc" if labels == "ukbb" else "ukbb"
        warnings.warn(f"{where}: the myocardium surrounds the structure read as RV, not the LV; "
                      f"is this a {other} mask? (pass --labels {other})")


def _check_not_empty(mask: np.ndarray, path: Path, phase: str) -> None:
    if not mask.any():
        raise InputError(path, f"{phase} mask is empty (background only); expected LV, MYO and RV labels")
    if phase == "ED" and not (mask == LV).any():
        raise InputError(path, "ED mask has no LV blood pool; the slice is chosen from (and centred on) the LV")


def _pick_slice(ed: np.ndarray, es: np.ndarray, slice_index: Optional[int], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Keep only slice `slice_index` (Z cropped), so preprocessing's mid-LV choice can only pick that one."""
    if slice_index is None:
        return ed, es
    depth, z = ed.shape[2], int(slice_index)
    if not 0 <= z < depth:
        raise InputError("slice", f"slice {z} outside the mask's {depth} slice(s) (0..{depth - 1})")
    if z not in lv_slices(ed):
        raise InputError(f"{path} slice {z}", f"no LV blood pool in this ED slice; LV slices: {lv_slices(ed).tolist()}")
    return ed[:, :, z:z + 1], es[:, :, z:z + 1]


def load_control_masks(mask_ed: str | Path, mask_es: str | Path | None, cfg: PreprocessConfig, labels: str = "ukbb",
                       slice_index: Optional[int] = None) -> np.ndarray:
    """ED (and ES) mask files -> control masks (2, S, S) uint8 in internal labels, preprocessed as in training.

    mask_es None: the ED mask stands in for both phases (with a warning). slice_index None: the mid-LV slice.
    """
    mask_ed = Path(mask_ed)
    ed, spacing, affine = read_mask_file(mask_ed, labels, cfg.crop_mm, cfg.size)
    if mask_es is None:
        warnings.warn(f"no ES mask given: using {mask_ed} for both ED and ES")
        es, es_path = ed, mask_ed
    else:
        es_path = Path(mask_es)
        es, _, affine_es = read_mask_file(es_path, labels, cfg.crop_mm, cfg.size)
        if es.shape != ed.shape:
            raise InputError(es_path, f"ED/ES shape mismatch: {es.shape} here vs {ed.shape} in {mask_ed}")
        if not np.allclose(affine, affine_es, atol=1e-3):
            warnings.warn(f"{es_path}: affine differs from {mask_ed}; using the ED geometry for both")
    _check_not_empty(ed, mask_ed, "ED")
    _check_not_empty(es, es_path, "ES")
    warn_if_swapped(ed, labels, mask_ed)
    ed, es = _pick_slice(ed, es, slice_index, mask_ed)
    zeros = np.zeros(ed.shape, dtype=np.float32)  # images are not needed; constant images preprocess fine
    subject = Subject(subject_id=str(mask_ed), image_ed=zeros, image_es=zeros, mask_ed=ed, mask_es=es,
                      affine=affine, spacing=spacing, attributes=Attributes(), source=mask_ed)
    samples = preprocess_subject(subject, dataclasses.replace(cfg, slice_offsets=(0,)))
    masks = samples[0].mask
    if not (masks[0] == LV).any():
        raise InputError(mask_ed, f"the LV vanished when resampling to {cfg.size} px over {cfg.crop_mm} mm; "
                                  "is the mask too small or its spacing wrong?")
    return masks
