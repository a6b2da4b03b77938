"""Kernel Inception Distance: unbiased MMD^2 with the polynomial kernel k(x, y) = (gamma x.y + coef0)^degree.

Unlike FID it is unbiased at small N, which is why it is reported next to FID for small subgroups.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from data.errors import InputError
from evaluation.fid import check_features


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    """x: (n, D), y: (m, D) -> (n, m)."""
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD^2 from kernel matrices of two equal-size samples (diagonals of kxx, kyy excluded)."""
    m = kxx.shape[0]
    sum_xx = kxx.sum() - np.trace(kxx)
    sum_yy = kyy.sum() - np.trace(kyy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
                              degree: int = 3, gamma: Optional[float] = None, coef0: float = 1,
                              seed: Optional[int] = 0) -> tuple[float, float]:
    """KID between features a: (Na, D) and b: (Nb, D); returns (mean, std) of MMD^2 over random subsets.

    subset_size is clipped to min(Na, Nb); gamma defaults to 1/D (the standard choice).
    """
    a, b = check_features(a, "features a"), check_features(b, "features b")
    if a.shape[1] != b.shape[1]:
        raise InputError("features b", f"feature dimension {b.shape[1]} does not match features a ({a.shape[1]})")
    if int(num_subsets) < 1:
        raise InputError("num_subsets", f"need at least 1 subset, got {num_subsets}")
    if int(subset_size) < 2:
        raise InputError("subset_size", f"need at least 2 samples per subset, got {subset_size}")
    m = min(int(subset_size), len(a), len(b))
    gamma = 1.0 / a.shape[1] if gamma is None else float(gamma)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(num_subsets)):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = polynomial_kernel(x, x, degree, gamma, coef0)
        kyy = polynomial_kernel(y, y, degree, gamma, coef0)
        kxy = polynomial_kernel(x, y, degree, gamma, coef0)
        values.append(mmd2_unbiased(kxx, kyy, kxy))
    v = np.asarray(values)
    return float(v.mean()), float(v.std())
