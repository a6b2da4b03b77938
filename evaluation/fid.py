"""Frechet distance between two feature sets (FID when the features come from the FID Inception network).

FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)). The trace of the matrix square root is taken through
a symmetric eigen-decomposition, Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2)), which is real and stable
even when the covariances are singular (fewer samples than dimensions), unlike a general sqrtm.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from data.errors import InputError


def check_features(features: np.ndarray, name: str = "features", min_samples: int = 2) -> np.ndarray:
    """Validate a (N, D) feature matrix and return it as float64."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise InputError(name, f"expected a 2D array (N, D), got shape {x.shape}")
    if x.shape[0] < min_samples:
        raise InputError(name, f"need at least {min_samples} samples, got {x.shape[0]}")
    if x.shape[1] < 1:
        raise InputError(name, "feature dimension D is 0")
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(name, f"expected numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError(name, f"contains {int((~np.isfinite(x)).sum())} NaN/inf values")
    return x


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features: (N, D) -> (mu (D,), sigma (D, D)) in float64, sigma with the unbiased (N-1) normaliser."""
    x = check_features(features)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _clip_round_off(w: np.ndarray) -> np.ndarray:
    """Zero eigenvalues at round-off level: sqrt would blow their ~1e-16 noise up to ~1e-8 each."""
    tol = float(np.abs(w).max()) * len(w) * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; tiny negative eigenvalues from round-off are clipped to 0."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(_clip_round_off(w))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for symmetric PSD S1, S2 (the eigenvalues of S1 S2 are those of S1^½ S2 S1^½)."""
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    return float(np.sqrt(_clip_round_off(np.linalg.eigvalsh((m + m.T) / 2))).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2). mu: (D,), sigma: (D, D)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    for name, arr, shape in (("mu1", mu1, (d,)), ("mu2", mu2, (d,)), ("sigma1", s1, (d, d)), ("sigma2", s2, (d, d))):
        if arr.shape != shape:
            raise InputError(name, f"expected shape {shape} to match mu1 of dimension {d}, got {arr.shape}")
        if not np.isfinite(arr).all():
            raise InputError(name, "contains NaN/inf values")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets a: (Na, D), b: (Nb, D)."""
    a, b = check_features(a, "features a"), check_features(b, "features b")
    if a.shape[1] != b.shape[1]:
        raise InputError("features b", f"feature dimension {b.shape[1]} does not match features a ({a.shape[1]})")
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0.0 for a single value)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _check_n_repeats(n: int, repeats: int) -> None:
    if int(n) < 2:
        raise InputError("n", f"need at least 2 images per side, got {n}")
    if int(repeats) < 1:
        raise InputError("repeats", f"need at least 1 repeat, got {repeats}")


def repeated_fid(real_feats: np.ndarray, fake_feats: np.ndarray, n: int, repeats: int,
                 seed: Optional[int] = 0) -> tuple[float, float]:
    """FID of n random real vs n random fake features (no replacement), repeated; returns (mean, std).

    Fixing n on both sides matters: FID is biased upward at small n, so only equal-n numbers compare.
    """
    real, fake = check_features(real_feats, "real features"), check_features(fake_feats, "fake features")
    if real.shape[1] != fake.shape[1]:
        raise InputError("fake features", f"dimension {fake.shape[1]} does not match real features ({real.shape[1]})")
    _check_n_repeats(n, repeats)
    for name, x in (("real features", real), ("fake features", fake)):
        if len(x) < n:
            raise InputError(name, f"n={n} images per side requested but only {len(x)} available")
    rng = np.random.default_rng(seed)
    fids = [fid_from_features(real[rng.choice(len(real), n, replace=False)],
                              fake[rng.choice(len(fake), n, replace=False)]) for _ in range(repeats)]
    return _mean_std(fids)


def real_vs_real_bound(feats: np.ndarray, subject_ids: Sequence, n: int, repeats: int,
                       seed: Optional[int] = 0) -> tuple[float, float]:
    """FID floor: each repeat splits the SUBJECTS into two disjoint random halves and compares n images of each.

    Splitting by subject (not by image) keeps slices of one patient from landing on both sides, which would
    make the bound optimistically low. Returns (mean, std) over repeats.
    """
    x = check_features(feats, "features")
    ids = np.asarray(subject_ids)
    if ids.ndim != 1 or len(ids) != len(x):
        raise InputError("subject_ids", f"expected one id per feature row ({len(x)}), got shape {ids.shape}")
    _check_n_repeats(n, repeats)
    subjects = np.unique(ids)
    if len(subjects) < 2:
        raise InputError("subject_ids", f"need at least 2 distinct subjects to split, got {len(subjects)}")
    rng = np.random.default_rng(seed)
    fids = []
    for _ in range(repeats):
        order = rng.permutation(subjects)
        in_a = np.isin(ids, order[: len(order) // 2])
        half_a, half_b = np.flatnonzero(in_a), np.flatnonzero(~in_a)
        if min(len(half_a), len(half_b)) < n:
            raise InputError("n", f"n={n} per side but a subject half has only {min(len(half_a), len(half_b))} "
                                  "images; use a smaller n (about a third of the images is safe)")
        fids.append(fid_from_features(x[rng.choice(half_a, n, replace=False)], x[rng.choice(half_b, n, replace=False)]))
    return _mean_std(fids)
