"""FID of the synthetic training images at one n per side, with repeats that differ, and the cross-subgroup
matrix (rows: real group A, columns: synthetic group B) that shows whether the prompt controls an attribute.

Each repeat draws new random subsets of both sides: without replacement when a side has n items or more, with
replacement (said in the output) when it has fewer, so that no two repeats are the same subsets by construction.
The real-vs-real bound splits the real subjects into two random halves per repeat, at the same n.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from data.errors import InputError
from evaluation.fid import fid_from_features


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    return rng.choice(pool, n, replace=len(pool) < n)


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": v.tolist()}


def equal_n_fid(real: np.ndarray, real_subjects: Sequence[str], fake: np.ndarray, n: int, repeats: int,
                seed: int = 0) -> dict:
    """FID(real, fake) and the subject-split bound FID(real half A, real half B), n features a side each repeat.

    real: (Nr, D), fake: (Nf, D). Returns both as mean/std/values plus which sides were drawn with replacement.
    """
    ids = np.asarray([str(s) for s in real_subjects])
    subjects = np.unique(ids)
    if int(n) < 2 or int(repeats) < 1 or len(subjects) < 2 or len(ids) != len(real):
        raise InputError("training-set FID", f"expected n >= 2, repeats >= 1 and >= 2 real subjects with one id a "
                                             f"row; got n={n}, repeats={repeats}, {len(subjects)} subjects")
    rng, fake_values, bound_values, halves = np.random.default_rng(seed), [], [], []
    for _ in range(int(repeats)):
        fake_values.append(fid_from_features(real[_draw(rng, np.arange(len(real)), n)],
                                             fake[_draw(rng, np.arange(len(fake)), n)]))
        in_a = np.isin(ids, rng.permutation(subjects)[: len(subjects) // 2])
        a, b = np.flatnonzero(in_a), np.flatnonzero(~in_a)
        halves.append(min(len(a), len(b)))
        bound_values.append(fid_from_features(real[_draw(rng, a, n)], real[_draw(rng, b, n)]))
    return {"n_per_side": int(n), "repeats": int(repeats), "fake_vs_real": _stats(fake_values),
            "real_vs_real_bound": _stats(bound_values), "ratio": float(np.mean(fake_values) / np.mean(bound_values)),
            "with_replacement": {"real": len(real) < n, "fake": len(fake) < n, "bound": min(halves) < n},
            "available": {"real": len(real), "fake": len(fake), "smallest_real_half": int(min(halves))}}


def cross_fid_matrix(real: np.ndarray, real_groups: Sequence, fake: np.ndarray, fake_groups: Sequence, n_max: int,
                     min_group: int, repeats: int, seed: int = 0, order: Sequence[str] = ()) -> dict:
    """FID(real group A, synthetic group B) for every pair of values seen on both sides with >= min_group items,
    all at one n = min(n_max, smallest such group), mean over repeats. None group labels are left out; values
    in `order` come first, in that order.

    The prompt controls the attribute if each synthetic column is closest to the real row of its own value
    ("diagonal_lowest_in_column") and each real row closest to its own synthetic column ("..._in_row").
    """
    r, f = np.asarray(real_groups, object), np.asarray(fake_groups, object)
    order = list(order)
    values = sorted({v for v in r if isinstance(v, str)} & {v for v in f if isinstance(v, str)},
                    key=lambda v: (order.index(v) if v in order else len(order), v))
    counts = {v: (int((r == v).sum()), int((f == v).sum())) for v in values}
    kept = [v for v in values if min(counts[v]) >= int(min_group)]
    out = {"counts": {v: {"real": c[0], "synthetic": c[1]} for v, c in counts.items()}, "values": kept}
    if len(kept) < 2:
        return {**out, "skipped": f"fewer than two values with >= {min_group} images on both sides"}
    n = min(int(n_max), *(min(counts[v]) for v in kept))
    rng = np.random.default_rng(seed)
    matrix = np.zeros((len(kept), len(kept)))
    for _ in range(int(repeats)):
        for i, a in enumerate(kept):
            ra = real[_draw(rng, np.flatnonzero(r == a), n)]
            for j, b in enumerate(kept):
                matrix[i, j] += fid_from_features(ra, fake[_draw(rng, np.flatnonzero(f == b), n)]) / int(repeats)
    diagonal = np.diag(matrix)
    return {**out, "n_per_side": int(n), "repeats": int(repeats),
            "matrix": {a: {b: float(matrix[i, j]) for j, b in enumerate(kept)} for i, a in enumerate(kept)},
            "diagonal_lowest_in_row": {a: bool(diagonal[i] <= matrix[i].min()) for i, a in enumerate(kept)},
            "diagonal_lowest_in_column": {b: bool(diagonal[j] <= matrix[:, j].min()) for j, b in enumerate(kept)}}
