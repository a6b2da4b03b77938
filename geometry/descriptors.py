"""Shape descriptors of one short-axis slice: areas, wall thickness, LV/RV ratio, area-based EF proxy.

mask: (H, W) label map in the internal convention (0 bg, 1 LV blood pool, 2 LV myocardium, 3 RV);
spacing_mm: in-plane pixel size, one float (square pixels) or (row, col).

Definitions and empty cases (never an exception for an empty structure):
- areas: pixel count * pixel area in mm^2; 0 when the structure is absent.
- wall_thickness_mm: mean, over endocardial border pixels (myocardium pixels 4-adjacent to the LV blood pool),
  of the Euclidean distance to the nearest pixel outside LV + myocardium. Pixel centre to pixel centre is
  edge to edge here (both ends sit half a pixel past their edge), so a ring of radii r < R gives R - r.
  Taking the nearest of discrete pixels biases it slightly low (about -0.2 px on rings of width 3-10 px).
  The septum is measured to the RV, as it should be. NaN when there is no myocardium or no LV touching it
  (no endocardial border to measure from).
- lv_rv_ratio: LV blood-pool area / RV area; NaN when the RV area is 0.
- ef_proxy (describe_ed_es): (LV_ED - LV_ES) / LV_ED from LV blood-pool *areas* of one slice, a 2D stand-in for
  the volumetric ejection fraction (for a disk it is 1 - (r_ES / r_ED)^2); NaN when the LV ED area is 0.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence, Union

import numpy as np
import pandas as pd
from scipy.ndimage import binary_dilation, distance_transform_edt

from data.cohort import LV, MYO, RV
from data.errors import InputError
from geometry.encodings import MaskLike, check_labels

Spacing = Union[float, tuple[float, float]]


@dataclass(frozen=True)
class Descriptors:
    """Descriptors of one frame of one slice; NaN marks a quantity undefined for this mask (see module doc)."""

    lv_area_mm2: float
    myo_area_mm2: float
    rv_area_mm2: float
    wall_thickness_mm: float
    lv_rv_ratio: float

    def to_dict(self) -> dict:
        return asdict(self)


def _floats(value, where: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(where, f"expected pixel spacing in mm as number(s), got {value!r}") from None


def _spacing_pair(spacing_mm: Spacing, where: str = "spacing_mm") -> tuple[float, float]:
    values = _floats(spacing_mm, where)
    if values.ndim > 1 or values.size not in (1, 2):
        raise InputError(where, f"expected one pixel size in mm or (row, col), got {spacing_mm!r}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise InputError(where, f"pixel spacing must be positive and finite, got {spacing_mm!r}")
    values = values.ravel()
    return (float(values[0]), float(values[-1]))


def _mask_2d(mask: MaskLike, where: str = "mask") -> np.ndarray:
    labels = check_labels(mask, where).cpu().numpy()
    if labels.ndim != 2:
        raise InputError(where, f"expected one (H, W) frame, got shape {labels.shape}")
    return labels


def wall_thickness_px(lv: np.ndarray, myo: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """lv, myo: (H, W) bool -> mean endocardium-to-epicardium distance in units of `spacing`; NaN if undefined."""
    endo_border = myo & binary_dilation(lv)  # default structure = 4-neighbour cross
    if not endo_border.any():
        return math.nan
    wall = np.pad(lv | myo, 1, constant_values=False)  # outside the image counts as outside the heart
    to_outside = distance_transform_edt(wall, sampling=spacing)[1:-1, 1:-1]
    return float(to_outside[endo_border].mean())


def describe(mask: MaskLike, spacing_mm: Spacing = 1.0) -> Descriptors:
    """mask: (H, W) labels -> Descriptors of that frame."""
    labels = _mask_2d(mask)
    spacing = _spacing_pair(spacing_mm)
    pixel_mm2 = spacing[0] * spacing[1]
    lv, myo, rv = labels == LV, labels == MYO, labels == RV
    lv_area, rv_area = float(lv.sum()) * pixel_mm2, float(rv.sum()) * pixel_mm2
    return Descriptors(
        lv_area_mm2=lv_area,
        myo_area_mm2=float(myo.sum()) * pixel_mm2,
        rv_area_mm2=rv_area,
        wall_thickness_mm=wall_thickness_px(lv, myo, spacing),
        lv_rv_ratio=lv_area / rv_area if rv_area > 0 else math.nan,
    )


def describe_ed_es(mask_ed: MaskLike, mask_es: MaskLike, spacing_mm: Spacing = 1.0) -> dict:
    """Two (H, W) frames -> {"ed_<descriptor>": .., "es_<descriptor>": .., "ef_proxy": ..}."""
    ed = describe(mask_ed, spacing_mm)
    es = describe(mask_es, spacing_mm)
    row = {f"ed_{k}": v for k, v in ed.to_dict().items()}
    row.update({f"es_{k}": v for k, v in es.to_dict().items()})
    lv_ed = ed.lv_area_mm2
    row["ef_proxy"] = (lv_ed - es.lv_area_mm2) / lv_ed if lv_ed > 0 else math.nan
    return row


def descriptors_table(masks: MaskLike, spacing_mm: Union[float, Sequence[float]] = 1.0) -> pd.DataFrame:
    """masks: (N, 2, H, W) ED/ES labels; spacing_mm: one float or N floats -> DataFrame with N rows."""
    labels = check_labels(masks, "masks").cpu().numpy()
    if labels.ndim != 4 or labels.shape[1] != 2:
        raise InputError("masks", f"expected shape (N, 2, H, W) of ED/ES frames, got {labels.shape}")
    n = labels.shape[0]
    spacings = _floats(spacing_mm, "spacing_mm")
    spacings = np.full(n, float(spacings)) if spacings.ndim == 0 else spacings
    if spacings.shape != (n,):
        raise InputError("spacing_mm", f"expected one float or {n} floats (one per sample), got shape {spacings.shape}")
    rows = [describe_ed_es(labels[i, 0], labels[i, 1], float(spacings[i])) for i in range(n)]
    return pd.DataFrame(rows)
