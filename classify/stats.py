"""Inference on bootstrap replicates: two-sided bootstrap p-values, Holm's step-down correction, verdict words,
and the minimum detectable effect of a design.

Verdicts say "helped" / "hurt" only when the evidence excludes no effect: the primary comparison by its 95% CI,
each secondary comparison by its Holm-corrected p-value; anything else is "inconclusive".
"""
from __future__ import annotations

import math

import numpy as np

from data.errors import InputError

Z_ALPHA_HALF, Z_POWER = 1.959964, 0.841621  # two-sided alpha 0.05, power 0.80
MDE_FACTOR = Z_ALPHA_HALF + Z_POWER  # ~2.8: a true effect this many SEs away from 0 is detected 80% of the time
VERDICTS = ("helped", "hurt", "inconclusive", "undetermined")


def bootstrap_p(replicates) -> float:
    """Two-sided bootstrap p-value of "the effect is 0": twice the smaller tail share of replicates at or beyond 0,
    with the +1 correction ((k + 1) / (B + 1)) so that B replicates never claim p < 1 / (B + 1). NaN replicates
    are dropped; NaN when none is left."""
    reps = np.asarray(replicates, dtype=float).ravel()
    reps = reps[~np.isnan(reps)]
    if len(reps) == 0:
        return float("nan")
    tail = min(int((reps <= 0).sum()), int((reps >= 0).sum()))
    return float(min(1.0, 2.0 * (tail + 1) / (len(reps) + 1)))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order (family-wise error control at any alpha).

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j)).
    Rejecting where adjusted p <= alpha is Holm's procedure. NaN p-values are left NaN and not counted in m.
    """
    p = np.asarray(p_values, dtype=float).ravel()
    if np.any((p < 0) | (p > 1)):
        raise InputError("holm: p_values", f"expected values in [0, 1], got {p.tolist()}")
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def verdict_from_interval(lo: float, hi: float) -> str:
    """Verdict "helped" when the whole interval of the gain is above 0, "hurt" below, else "inconclusive"."""
    if _is_nan(lo) or _is_nan(hi):
        return "undetermined"
    return "helped" if lo > 0 else ("hurt" if hi < 0 else "inconclusive")


def verdict_from_p(point: float, p_adjusted: float, alpha: float = 0.05) -> str:
    """Verdict "helped" / "hurt" (by the sign of the point gain) when the corrected p-value is below alpha."""
    if _is_nan(point) or _is_nan(p_adjusted):
        return "undetermined"
    if p_adjusted >= alpha or point == 0:
        return "inconclusive"
    return "helped" if point > 0 else "hurt"


def minimum_detectable_effect(se: float) -> float:
    """The smallest true gain a two-sided test at alpha 0.05 detects with 80% power, given the gain's SE."""
    return float("nan") if _is_nan(se) else MDE_FACTOR * float(se)


def _is_nan(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))
