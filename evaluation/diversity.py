"""Diversity and memorisation checks: mean pairwise MS-SSIM among generated images (high = mode collapse),
the distance of each generated image to its nearest real one (near zero = a copied training image), and how many
different geometries a plan's control masks hold (mask_diversity: distinct donors, mean pairwise Dice).

MS-SSIM follows Wang et al. 2003: Gaussian window 11 / sigma 1.5, 'valid' filtering, data range 2 (images in
[-1, 1]), 2x2 average-pool between scales, weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). Small images do
not fit 5 scales of an 11-px window: we use the M <= 5 scales whose side is still >= 11 px (64 px -> 3 scales,
32 px -> 2) and renormalise the first M weights to sum to 1. Negative contrast terms are clamped to 0 so the
fractional powers stay real. Numbers at different image sizes are therefore not comparable.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from data.cohort import LABEL_NAMES
from data.errors import InputError
from evaluation.fidelity import dice

WINDOW, SIGMA, DATA_RANGE, K1, K2 = 11, 1.5, 2.0, 0.01, 0.03
SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def num_scales(side: int) -> int:
    """Scales (<= 5) whose side after repeated halving still holds the 11-px window."""
    m = 0
    while m < len(SCALE_WEIGHTS) and side // 2 ** m >= WINDOW:
        m += 1
    return m


def _gaussian_filter(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian, 'valid' padding. x: (B, 1, H, W) -> (B, 1, H-10, W-10)."""
    r = torch.arange(WINDOW, dtype=x.dtype) - WINDOW // 2
    g = torch.exp(-r ** 2 / (2 * SIGMA ** 2))
    g = g / g.sum()
    return F.conv2d(F.conv2d(x, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))


def _ssim_terms(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and mean contrast-structure term. x, y: (B, 1, H, W) -> (B,), (B,)."""
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    mx, my = _gaussian_filter(x), _gaussian_filter(y)
    sxx = _gaussian_filter(x * x) - mx * mx
    syy = _gaussian_filter(y * y) - my * my
    sxy = _gaussian_filter(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))


def ms_ssim_batch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of image pairs. x, y: (B, 1, H, W) float64 in [-1, 1] -> (B,)."""
    m = num_scales(min(x.shape[-2:]))
    if m == 0:
        raise InputError("images", f"MS-SSIM needs images of at least {WINDOW}x{WINDOW}, got {tuple(x.shape[-2:])}")
    w = torch.tensor(SCALE_WEIGHTS[:m], dtype=x.dtype)
    w = w / w.sum()
    out = torch.ones(x.shape[0], dtype=x.dtype)
    for j in range(m):
        ssim, cs = _ssim_terms(x, y)
        term = ssim if j == m - 1 else cs
        out = out * term.clamp(min=0) ** w[j]
        if j < m - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return out


def _as_images(images, name: str, per_item: bool) -> torch.Tensor:
    """Validate and return (..., H, W) as float64: 2D/3D for one image, 3D/4D with a leading N when per_item."""
    x = np.asarray(images)
    allowed = (3, 4) if per_item else (2, 3)
    if x.ndim not in allowed or x.size == 0:
        raise InputError(name, f"expected {'(N, H, W) or (N, C, H, W)' if per_item else '(H, W) or (C, H, W)'}, "
                               f"got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError(name, "contains NaN/inf values")
    return torch.as_tensor(x, dtype=torch.float64)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two images (H, W) or (C, H, W) in [-1, 1]; channels are scored separately and averaged."""
    x, y = _as_images(a, "a", per_item=False), _as_images(b, "b", per_item=False)
    if x.shape != y.shape:
        raise InputError("b", f"shape {tuple(y.shape)} does not match a {tuple(x.shape)}")
    x, y = x.reshape(-1, 1, *x.shape[-2:]), y.reshape(-1, 1, *y.shape[-2:])
    return float(ms_ssim_batch(x, y).mean())


def mean_pairwise_ms_ssim(images: np.ndarray, max_pairs: Optional[int] = None, seed: Optional[int] = 0,
                          chunk: int = 256) -> float:
    """Mean MS-SSIM over pairs i < j of images (N, H, W) or (N, C, H, W); a random subset of pairs if max_pairs."""
    x = _as_images(images, "images", per_item=True)
    n = x.shape[0]
    if n < 2:
        raise InputError("images", f"need at least 2 images for pairwise MS-SSIM, got {n}")
    i, j = np.triu_indices(n, k=1)
    if max_pairs is not None and len(i) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(i), int(max_pairs), replace=False)
        i, j = i[pick], j[pick]
    x = x.reshape(n, -1, *x.shape[-2:])  # channels scored separately, then averaged
    scores = []
    for s in range(0, len(i), chunk):
        a, b = x[i[s:s + chunk]], x[j[s:s + chunk]]
        scores.append(ms_ssim_batch(a.reshape(-1, 1, *a.shape[-2:]), b.reshape(-1, 1, *b.shape[-2:])))
    return float(torch.cat(scores).mean())


def nearest_real_distance(fake: np.ndarray, real: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """L2 distance of every fake item to its nearest real item. fake: (Nf, ...), real: (Nr, ...) -> (Nf,) float64.

    Works on images or features alike: everything after the first axis is flattened.
    """
    f, r = np.asarray(fake, np.float64), np.asarray(real, np.float64)
    if f.ndim < 2 or r.ndim < 2 or f.shape[1:] != r.shape[1:] or len(f) == 0 or len(r) == 0:
        raise InputError("real", f"expected (N, ...) arrays with matching item shapes, got fake {f.shape} "
                                 f"and real {r.shape}")
    for name, arr in (("fake", f), ("real", r)):
        if not np.isfinite(arr).all():
            raise InputError(name, "contains NaN/inf values")
    f, r = f.reshape(len(f), -1), r.reshape(len(r), -1)
    r_sq = (r * r).sum(axis=1)
    out = np.empty(len(f))
    for s in range(0, len(f), chunk):
        fb = f[s:s + chunk]
        d2 = (fb * fb).sum(axis=1)[:, None] + r_sq[None, :] - 2.0 * fb @ r.T
        out[s:s + chunk] = np.sqrt(np.clip(d2.min(axis=1), 0.0, None))
    return out


def mask_diversity(masks: np.ndarray, donors: Sequence[str], max_pairs: int = 2000, seed: int = 0) -> dict:
    """How many different geometries a set of control masks holds. masks: (N, 2, S, S) labels (ED, ES);
    donors: (N,) the real subject each mask came from. -> n_masks, n_donors (distinct donor subjects),
    n_distinct_masks (distinct arrays: a re-render of the same mask counts once), mean_pairwise_dice (mean over
    up to max_pairs random pairs of the mean LV / MYO / RV Dice of both frames; 1 = all the same geometry)."""
    masks = np.asarray(masks)
    if masks.ndim != 4 or len(masks) != len(donors):
        raise InputError("mask_diversity", f"expected (N, 2, S, S) masks and N donors, got {masks.shape}, {len(donors)}")
    out = {"n_masks": len(masks), "n_donors": len(set(map(str, donors))),
           "n_distinct_masks": len({m.tobytes() for m in np.ascontiguousarray(masks, dtype=np.uint8)}),
           "mean_pairwise_dice": float("nan")}
    pairs = [(i, j) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    if pairs:
        rng = np.random.default_rng(seed)
        chosen = [pairs[k] for k in rng.choice(len(pairs), min(max_pairs, len(pairs)), replace=False)]
        out["mean_pairwise_dice"] = float(np.mean([np.mean([dice(masks[i], masks[j], label) for label in LABEL_NAMES])
                                                   for i, j in chosen]))
    return out
