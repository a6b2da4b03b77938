"""Tiny fixture cohorts written to a temp folder, in the UK Biobank and ACDC on-disk layouts.

Masks are a plausible heart per slice (LV disk, myocardium ring, RV beside it); images are float
intensities per tissue plus noise. Other tests may import these helpers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data.cohort import BACKGROUND, LV, MYO, RV
from data.nifti import save_nifti

FIXTURE_SPACING = (1.8, 1.8, 8.0)  # mm, like UK Biobank short-axis cine
FIXTURE_AFFINE = np.array([[1.8, 0.0, 0.0, -30.0],
                           [0.0, 1.8, 0.0, 20.0],
                           [0.0, 0.0, 8.0, 5.0],
                           [0.0, 0.0, 0.0, 1.0]])
ACDC_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0]) @ FIXTURE_AFFINE  # LPS, as every file of the shared ACDC copy
INTERNAL_TO_ACDC = {BACKGROUND: 0, RV: 1, MYO: 2, LV: 3}
ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")
UKBB_HEALTH = ("healthy", "heart_failure", "myocardial_infarction")
TISSUE_INTENSITY = {BACKGROUND: 0.1, LV: 0.9, MYO: 0.3, RV: 0.8}


def heart_mask(shape: tuple[int, int, int], rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Internal-label mask (X, Y, Z) uint8: per slice an LV disk, a myocardium ring and an RV disk to its side."""
    nx, ny, nz = shape
    xs, ys = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    mask = np.zeros(shape, dtype=np.uint8)
    size = min(nx, ny)
    for z in range(nz):
        taper = 1.0 - 0.4 * z / max(nz - 1, 1)  # the heart narrows towards the apex
        cx, cy = nx / 2 + rng.uniform(-1, 1), ny / 2 + rng.uniform(-1, 1)
        r_lv = 0.14 * size * scale * taper
        r_myo = r_lv + 0.07 * size
        r_rv = 0.16 * size * scale * taper
        d_lv = np.hypot(xs - cx, ys - cy)
        d_rv = np.hypot(xs - (cx - r_myo - 0.6 * r_rv), ys - cy)
        mask[..., z][d_rv <= r_rv] = RV
        mask[..., z][d_lv <= r_myo] = MYO
        mask[..., z][d_lv <= r_lv] = LV
    return mask


def heart_image(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Float32 image (X, Y, Z): tissue intensity per internal label plus Gaussian noise."""
    lookup = np.array([TISSUE_INTENSITY[k] for k in range(4)], dtype=np.float32)
    return lookup[mask] + rng.normal(0.0, 0.05, mask.shape).astype(np.float32)


def write_metadata_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_ukbb_fixture(tmp_path: Path, n: int = 3, shape: tuple[int, int, int] = (32, 32, 4), seed: int = 0) -> Path:
    """root/<eid>/{sa,seg_sa}_{ED,ES}.nii.gz + root/metadata.csv (eid, sex, age, bmi, health) -> root."""
    rng = np.random.default_rng(seed)
    root = Path(tmp_path) / "ukbb"
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        eid = str(1000001 + i)
        folder = root / eid
        folder.mkdir(exist_ok=True)
        for phase, scale in (("ED", 1.0), ("ES", 0.7)):
            mask = heart_mask(shape, rng, scale)
            save_nifti(folder / f"sa_{phase}.nii.gz", heart_image(mask, rng), FIXTURE_AFFINE)
            save_nifti(folder / f"seg_sa_{phase}.nii.gz", mask, FIXTURE_AFFINE)
        rows.append({"eid": eid, "sex": ("female", "male")[i % 2], "age": round(float(rng.uniform(40, 75)), 1),
                     "bmi": round(float(rng.uniform(18, 35)), 1), "health": UKBB_HEALTH[i % len(UKBB_HEALTH)]})
    write_metadata_csv(root / "metadata.csv", rows)
    return root


def write_acdc_fixture(tmp_path: Path, n: int = 2, shape: tuple[int, int, int] = (32, 32, 4), seed: int = 0,
                       ed: int = 1, es: int = 12, spacing_lost: bool = False) -> Path:
    """root/patientNNN/{Info.cfg, patientNNN_frameXX[_gt].nii.gz} with ACDC labels -> root.

    spacing_lost=True writes identity affines with unknown units, like the shared ACDC copy.
    """
    rng = np.random.default_rng(seed)
    root = Path(tmp_path) / "acdc"
    root.mkdir(parents=True, exist_ok=True)
    affine, unit = (np.eye(4), "unknown") if spacing_lost else (ACDC_AFFINE, "mm")
    to_acdc = np.array([INTERNAL_TO_ACDC[k] for k in range(4)], dtype=np.uint8)
    for i in range(n):
        name = f"patient{i + 1:03d}"
        folder = root / name
        folder.mkdir(exist_ok=True)
        info = [f"ED: {ed}", f"ES: {es}", f"Group: {ACDC_GROUPS[i % len(ACDC_GROUPS)]}",
                f"Height: {rng.uniform(150, 195):.1f}", f"Weight: {rng.uniform(50, 110):.1f}", f"NbFrame: {max(ed, es) + 3}"]
        (folder / "Info.cfg").write_text("\n".join(info) + "\n")
        for frame, scale in ((ed, 1.0), (es, 0.7)):
            mask = heart_mask(shape, rng, scale)
            save_nifti(folder / f"{name}_frame{frame:02d}.nii.gz", heart_image(mask, rng), affine, unit)
            save_nifti(folder / f"{name}_frame{frame:02d}_gt.nii.gz", to_acdc[mask], affine, unit)
    return root
