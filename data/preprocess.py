"""3D subject -> 2D training samples: short-axis slices (around the mid-ventricular one, or every slice showing
the LV with its position base/mid/apex), ED and ES stacked as channels.

Each sample is a crop_mm square centred on the heart, resampled to size x size pixels (crop_mm / size mm per
pixel, whatever the scanner spacing), intensities robustly scaled to [-1, 1], masks in the internal labels.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from data.attributes import Attributes
from data.cohort import LV, MYO, NUM_LABELS, RV, Subject
from data.errors import InputError
from data.prompts import SLICE_POSITIONS
from data.fields import bounded, check_fields

# Bump when the preprocessing code changes meaning, so old caches are not reused.
PREPROCESS_VERSION = 1


@dataclass
class PreprocessConfig:
    size: int = bounded(64, lo=1, hi=1024)  # output pixels per side (the method: 512)
    crop_mm: float = 128.0  # physical side of the crop; pixel spacing = crop_mm / size
    unknown_spacing_mm: float = 1.5  # in-plane spacing assumed when the subject does not know its own
    slice_offsets: tuple[int, ...] = (0,)  # slices relative to the mid-LV slice (augmentation)
    # True: every slice whose ED mask shows the LV, its position (basal/mid/apical) in the prompt; slice_offsets unused
    all_lv_slices: bool = False
    intensity_percentiles: tuple[float, float] = (1.0, 99.0)  # mapped to -1 and 1

    def __post_init__(self) -> None:
        # Coerce types so equal configs hash equally (128 vs 128.0, list vs tuple).
        self.size = int(self.size)
        self.crop_mm = float(self.crop_mm)
        self.unknown_spacing_mm = float(self.unknown_spacing_mm)
        self.slice_offsets = tuple(int(o) for o in self.slice_offsets)
        self.all_lv_slices = bool(self.all_lv_slices)
        self.intensity_percentiles = tuple(float(p) for p in self.intensity_percentiles)
        check_fields(self, "data.preprocess")
        for name in ("crop_mm", "unknown_spacing_mm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"PreprocessConfig.{name}", f"expected a positive length in mm, got {value}")
        if not self.slice_offsets:
            raise InputError("PreprocessConfig.slice_offsets", "expected at least one offset, e.g. (0,)")
        lo_hi = self.intensity_percentiles
        if len(lo_hi) != 2 or not 0.0 <= lo_hi[0] < lo_hi[1] <= 100.0:
            raise InputError("PreprocessConfig.intensity_percentiles", f"expected (lo, hi) with 0 <= lo < hi <= 100, got {lo_hi}")


def config_hash(cfg: PreprocessConfig) -> str:
    """Stable short id of a config: sha256 of its fields (plus PREPROCESS_VERSION) as sorted JSON."""
    text = json.dumps({"version": PREPROCESS_VERSION, **asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Sample2D:
    """One training sample. image: (2, S, S) float32 in [-1, 1] (ED, ES); mask: (2, S, S) uint8 labels."""

    subject_id: str
    slice_index: int
    image: np.ndarray
    mask: np.ndarray
    attributes: Attributes
    spacing_assumed: bool = False  # True when cfg.unknown_spacing_mm stood in for a missing spacing
    position: Optional[str] = None  # basal / mid / apical (cfg.all_lv_slices), else None


def _check_subject(subject: Subject) -> None:
    where = f"subject {subject.subject_id}"
    volumes = {"image_ed": subject.image_ed, "image_es": subject.image_es,
               "mask_ed": subject.mask_ed, "mask_es": subject.mask_es}
    shapes = {name: np.shape(v) for name, v in volumes.items()}
    if len(shapes["image_ed"]) != 3 or 0 in shapes["image_ed"] or len(set(shapes.values())) != 1:
        raise InputError(where, f"expected ED/ES images and masks of one non-empty 3D shape (X, Y, Z), got {shapes}")
    for name in ("image_ed", "image_es"):
        if not np.all(np.isfinite(volumes[name])):
            raise InputError(where, f"{name} contains NaN or infinite intensities")
    for name in ("mask_ed", "mask_es"):
        labels = np.unique(volumes[name])
        if labels.min() < 0 or labels.max() >= NUM_LABELS or not np.all(labels == np.round(labels)):
            raise InputError(where, f"{name} has labels {labels.tolist()}; expected internal labels 0..{NUM_LABELS - 1}")


def _in_plane_spacing(subject: Subject, cfg: PreprocessConfig) -> tuple[float, float, bool]:
    if subject.spacing is None:
        return cfg.unknown_spacing_mm, cfg.unknown_spacing_mm, True
    sx, sy = float(subject.spacing[0]), float(subject.spacing[1])
    if not (math.isfinite(sx) and math.isfinite(sy) and sx > 0 and sy > 0):
        raise InputError(f"subject {subject.subject_id}", f"impossible spacing {subject.spacing}; expected positive mm")
    return sx, sy, False


def lv_slices(mask_ed: np.ndarray) -> np.ndarray:
    """Indices z whose ED mask slice (X, Y, Z)[:, :, z] contains LV blood pool, ascending."""
    return np.flatnonzero((mask_ed == LV).any(axis=(0, 1)))


def mid_lv_slice(mask_ed: np.ndarray) -> int:
    """Middle of the LV slices (the lower middle for an even count): the mid-ventricular slice."""
    slices = lv_slices(mask_ed)
    return int(slices[(len(slices) - 1) // 2])


def slice_position(rank: int, count: int) -> str:
    """Position of the rank-th of count LV slices (0 = first = base on a base-to-apex stack): thirds of the
    normalised position rank / (count - 1) -> basal / mid / apical; a single slice is mid."""
    if count < 1 or not 0 <= rank < count:
        raise InputError("slice position", f"rank {rank} outside 0..{count - 1}")
    t = 0.5 if count == 1 else rank / (count - 1)
    return SLICE_POSITIONS[min(int(t * 3), 2)]


def crop_grid(centre: tuple[float, float], spacing: tuple[float, float], cfg: PreprocessConfig) -> np.ndarray:
    """Voxel coordinates (2, S, S) of an S x S grid of crop_mm / S mm pixels centred on centre (voxels)."""
    step = cfg.crop_mm / cfg.size
    offsets_mm = (np.arange(cfg.size) - (cfg.size - 1) / 2.0) * step
    xs = centre[0] + offsets_mm / spacing[0]
    ys = centre[1] + offsets_mm / spacing[1]
    return np.stack(np.meshgrid(xs, ys, indexing="ij"))


def _resample(plane: np.ndarray, grid: np.ndarray, order: int) -> np.ndarray:
    # Outside the volume: zero intensity / background label.
    return ndimage.map_coordinates(plane, grid, order=order, mode="constant", cval=0.0)


def normalise_intensity(planes: np.ndarray, reference: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map percentiles (lo, hi) of reference to -1 and 1, clipping outside: planes any shape -> float32."""
    lo, hi = np.percentile(reference, percentiles)
    scaled = (planes - lo) / max(hi - lo, 1e-12)
    return (2.0 * np.clip(scaled, 0.0, 1.0) - 1.0).astype(np.float32)


def preprocess_subject(subject: Subject, cfg: PreprocessConfig) -> list[Sample2D]:
    """Subject with volumes (X, Y, Z) -> one Sample2D per usable slice offset around the mid-LV slice, or per LV
    slice with its position (cfg.all_lv_slices; Z runs base to apex, as in ACDC and UK Biobank)."""
    _check_subject(subject)
    slices = lv_slices(subject.mask_ed)
    if len(slices) == 0:
        where = f"subject {subject.subject_id}" + (f" ({subject.source})" if subject.source is not None else "")
        raise InputError(where, "ED mask has no LV blood pool (label 1) in any slice")
    sx, sy, assumed = _in_plane_spacing(subject, cfg)
    mid = mid_lv_slice(subject.mask_ed)
    mid_planes = np.stack([subject.image_ed[:, :, mid], subject.image_es[:, :, mid]]).astype(np.float64)
    samples = []
    wanted = slices if cfg.all_lv_slices else dict.fromkeys(mid + o for o in cfg.slice_offsets)  # dedupe, keep order
    for z in wanted:
        if z not in slices:
            continue  # neighbour outside the LV: not a short-axis view of the ventricle
        heart = np.isin(subject.mask_ed[:, :, z], (LV, MYO, RV))
        grid = crop_grid(tuple(np.argwhere(heart).mean(axis=0)), (sx, sy), cfg)
        raw = np.stack([_resample(subject.image_ed[:, :, z].astype(np.float64), grid, 1),
                        _resample(subject.image_es[:, :, z].astype(np.float64), grid, 1)])
        mask = np.stack([_resample(subject.mask_ed[:, :, z].astype(np.int16), grid, 0),
                         _resample(subject.mask_es[:, :, z].astype(np.int16), grid, 0)]).astype(np.uint8)
        # One scale per subject (from the mid slice), so neighbouring slices stay comparable.
        image = normalise_intensity(raw, mid_planes, cfg.intensity_percentiles)
        position = slice_position(int(np.searchsorted(slices, z)), len(slices)) if cfg.all_lv_slices else None
        samples.append(Sample2D(subject.subject_id, int(z), image, mask, subject.attributes, assumed, position))
    return samples
