"""In-memory form of a cohort: one Subject per patient (3D ED/ES volumes + masks + attributes).

Internal label convention (UK Biobank / ukbb_cardiac): 0 background, 1 LV blood pool, 2 LV myocardium, 3 RV.
Every reader maps its layout's labels to this through a declared label map.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from data.attributes import Attributes

BACKGROUND, LV, MYO, RV = 0, 1, 2, 3
LABEL_NAMES = {LV: "LV", MYO: "MYO", RV: "RV"}
NUM_LABELS = 4


@dataclass
class Subject:
    """One patient. Volumes are (X, Y, Z) with Z the short-axis slices; masks use the internal labels."""

    subject_id: str
    image_ed: np.ndarray  # (X, Y, Z) float32
    image_es: np.ndarray  # (X, Y, Z) float32
    mask_ed: np.ndarray  # (X, Y, Z) uint8, internal labels
    mask_es: np.ndarray  # (X, Y, Z) uint8, internal labels
    affine: np.ndarray  # (4, 4) voxel -> world (mm) of the ED image
    spacing: Optional[tuple[float, float, float]]  # mm; None when the file does not know it (e.g. shared ACDC)
    attributes: Attributes = field(default_factory=Attributes)
    source: Optional[Path] = None
