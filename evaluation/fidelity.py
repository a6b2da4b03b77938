"""Control fidelity: does a generated image carry the geometry it was conditioned on?

The segmenter's masks of generated images are compared with the conditioning masks by Dice per structure and by
the error of clinical shape descriptors (LV area, wall thickness, EF proxy).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np

from data.cohort import LABEL_NAMES
from data.errors import InputError
from geometry.descriptors import describe_ed_es

# keys of geometry.descriptors.describe_ed_es: per-frame descriptors get an ed_/es_ prefix
DESCRIPTOR_KEYS = ("ed_lv_area_mm2", "es_lv_area_mm2", "ed_wall_thickness_mm", "es_wall_thickness_mm", "ef_proxy")


def _check_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred), np.asarray(target)
    if p.shape != t.shape:
        raise InputError("pred", f"shape {p.shape} does not match target {t.shape}")
    if p.size == 0:
        raise InputError("pred", "empty mask")
    return p, t


def dice(pred: np.ndarray, target: np.ndarray, label: int) -> float:
    """Dice of one label over all voxels. Both masks lacking the label -> 1.0 (perfect agreement on absence)."""
    p, t = _check_pair(pred, target)
    a, b = p == label, t == label
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def dice_per_structure(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """pred, target: (N, ...) label maps -> {"LV", "MYO", "RV"}: mean over the N items of each item's Dice."""
    p, t = _check_pair(pred, target)
    if p.ndim < 2:
        raise InputError("pred", f"expected (N, ...) with a leading item axis, got shape {p.shape}")
    return {name: float(np.mean([dice(p[i], t[i], label) for i in range(len(p))]))
            for label, name in LABEL_NAMES.items()}


def descriptor_errors(pred_masks: np.ndarray, target_masks: np.ndarray, spacing_mm: Union[float, Sequence[float]],
                      keys: Sequence[str] = DESCRIPTOR_KEYS,
                      describe: Optional[Callable] = None) -> dict[str, float]:
    """Mean absolute error of shape descriptors between predicted and target ED/ES mask pairs.

    pred_masks, target_masks: (N, 2, S, S) labels, channel 0 ED, 1 ES; spacing_mm: one pixel size (float or
    (row, col)) shared by all items. describe(mask_ed, mask_es, spacing_mm) -> dict defaults to
    geometry.descriptors.describe_ed_es. Items where either value is non-finite (e.g. an EF
    proxy of an empty LV) are skipped; a key with no finite pair gets NaN. Returns {key + "_mae": float} plus
    "n_valid_<key>" counts so skipped items stay visible.
    """
    p, t = _check_pair(pred_masks, target_masks)
    if p.ndim != 4 or p.shape[1] != 2:
        raise InputError("pred_masks", f"expected (N, 2, S, S) ED/ES mask pairs, got shape {p.shape}")
    describe = describe or describe_ed_es
    pred_d = [describe(p[i, 0], p[i, 1], spacing_mm) for i in range(len(p))]
    true_d = [describe(t[i, 0], t[i, 1], spacing_mm) for i in range(len(t))]
    out: dict[str, float] = {}
    for key in keys:
        if key not in true_d[0]:
            raise InputError("keys", f"descriptor {key!r} not produced; available: {sorted(true_d[0])}")
        err = np.abs(np.array([d[key] for d in pred_d], float) - np.array([d[key] for d in true_d], float))
        ok = np.isfinite(err)
        out[f"{key}_mae"] = float(err[ok].mean()) if ok.any() else float("nan")
        out[f"n_valid_{key}"] = int(ok.sum())
    return out
