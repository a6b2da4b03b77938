"""Memorisation of the synthetic training images: each sample's distance to its donor (the real slice whose mask
conditioned it) and to its nearest real training image, against the natural scale of the data: the distance from
each real training image to its nearest image of ANOTHER subject. A sample closer than that distribution's 5th
percentile is flagged: a real patient sits no closer to anybody else.

Distances are RMS differences (L2 / sqrt(item size)) so that the image size does not change the scale; the same
code serves pixels (N, 2, S, S) and features (N, D).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from data.errors import InputError
from evaluation.diversity import nearest_real_distance

LOW_PERCENTILE = 5.0


def _flat(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1) / np.sqrt(max(x[0].size, 1))


def _squared(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Na, D), (Nb, D) -> (Na, Nb) squared L2 distances, clipped at 0 (round-off)."""
    return np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0, None)


def nearest_other_subject(real: np.ndarray, subjects: Sequence[str], chunk: int = 1024) -> np.ndarray:
    """Real items (N, ...) with one subject id each -> (N,) RMS distance to the nearest item of another subject."""
    r, ids = _flat(real), np.asarray([str(s) for s in subjects])
    if len(ids) != len(r) or len(set(ids)) < 2:
        raise InputError("real subjects", f"expected one id per item ({len(r)}) and >= 2 subjects, got {len(ids)} "
                                          f"ids for {len(set(ids))} subjects")
    out = np.empty(len(r))
    for s in range(0, len(r), chunk):
        d2 = _squared(r[s:s + chunk], r)
        d2[ids[s:s + chunk, None] == ids[None, :]] = np.inf  # the same subject is no "other" image
        out[s:s + chunk] = np.sqrt(d2.min(axis=1))
    return out


def donor_distance(fake: np.ndarray, real: np.ndarray, donor_rows: Sequence[int]) -> np.ndarray:
    """(Nf, ...) samples, (Nr, ...) real items and each sample's donor row in real -> (Nf,) RMS distance."""
    rows = np.asarray(donor_rows, dtype=np.int64)
    if len(rows) != len(fake) or (len(rows) and (rows.min() < 0 or rows.max() >= len(real))):
        raise InputError("plan.csv: mask_row", f"expected one row in [0, {len(real)}) per sample, got {len(rows)} "
                                               "rows outside it or of another count")
    f, r = _flat(fake), _flat(np.asarray(real)[rows])
    return np.sqrt(((f - r) ** 2).sum(axis=1))


def memorisation(fake: np.ndarray, real: np.ndarray, real_subjects: Sequence[str], donor_rows: Sequence[int],
                 cells: Sequence[str]) -> dict:
    """Donor and nearest-real distances of the samples against the real nearest-other-subject distribution.

    fake: (Nf, ...) samples; real: (Nr, ...) real training items (pixels or features); cells: each sample's cell.
    Returns medians, the natural scale's 5th percentile, and per cell and overall the share of samples closer than
    it to their donor ("flagged_donor") or to any real image ("flagged_nearest").
    """
    natural = nearest_other_subject(real, real_subjects)
    donor, nearest = donor_distance(fake, real, donor_rows), nearest_real_distance(_flat(fake), _flat(real))
    low = float(np.percentile(natural, LOW_PERCENTILE))

    def summary(idx: np.ndarray) -> dict:
        return {"n": int(len(idx)), "donor_median": float(np.median(donor[idx])),
                "nearest_median": float(np.median(nearest[idx])),
                "flagged_donor": float((donor[idx] < low).mean()), "flagged_nearest": float((nearest[idx] < low).mean())}

    cells = np.asarray(cells, dtype=object)
    return {"natural_median": float(np.median(natural)), "natural_p5": low, "overall": summary(np.arange(len(donor))),
            "per_cell": {c: summary(np.flatnonzero(cells == c)) for c in sorted(set(cells))}}
