"""Segmentation masks -> ControlNet control images at image resolution.

masks: (B, F, H, W) integer label maps in the internal convention (0 bg, 1 LV, 2 MYO, 3 RV), F frames (ED, ES).
Channels are structure-major inside a frame, 3 per frame: [f0 LV, f0 MYO, f0 RV, f1 LV, ...].

- onehot:   1 inside the structure, else 0.
- contours: 1 on the structure's inner boundary: its pixels with a 4-neighbour outside it (outside the image
            counts as background, so a structure cut by the border is closed there).
- sdf:      signed distance to the structure's edge, negative inside, positive outside, squashed as
            tanh(d / scale) with scale = min(H, W) / 4 pixels (tanh keeps it strictly monotone, unlike a clip).
            d is measured to the pixel edge (EDT between pixel centres minus half a pixel), so boundary pixels
            are at |d| = 0.5 px. An absent structure is a constant +1 channel: "outside, infinitely far".
- stacked:  onehot channels then sdf channels (6 per frame).
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from data.cohort import LV, MYO, NUM_LABELS, RV
from data.errors import InputError

CONTROL_TYPES = ("onehot", "contours", "sdf", "stacked")
STRUCTURES = (LV, MYO, RV)
SDF_SCALE_FRACTION = 0.25  # sdf scale in pixels = SDF_SCALE_FRACTION * min(H, W)
_CHANNELS_PER_FRAME = {"onehot": 3, "contours": 3, "sdf": 3, "stacked": 6}

MaskLike = Union[torch.Tensor, np.ndarray]


def check_kind(kind: str) -> str:
    if kind not in CONTROL_TYPES:
        raise InputError("control", f"unknown control type {kind!r}; expected one of {', '.join(CONTROL_TYPES)}")
    return kind


def control_channels(kind: str, frames: int = 2) -> int:
    """Number of channels encode_control(masks with `frames` frames, kind) returns."""
    check_kind(kind)
    if int(frames) != frames or frames < 1:
        raise InputError("frames", f"expected a positive integer number of frames, got {frames!r}")
    return _CHANNELS_PER_FRAME[kind] * int(frames)


def check_labels(masks: MaskLike, where: str = "masks") -> torch.Tensor:
    """Validate a label map (any shape) and return it as an int64 tensor on its device."""
    try:
        x = torch.as_tensor(masks)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(where, f"expected an integer label array, got {type(masks).__name__}") from None
    if x.numel() == 0:
        raise InputError(where, f"empty mask of shape {tuple(x.shape)}")
    if x.dtype == torch.bool or x.is_complex():
        raise InputError(where, f"expected integer labels, got dtype {x.dtype}")
    if x.is_floating_point():
        if not bool(torch.isfinite(x).all()) or not bool((x == x.round()).all()):
            raise InputError(where, "expected integer labels 0..3, found non-integer values")
    x = x.long()
    found = torch.unique(x).tolist()
    bad = [v for v in found if not 0 <= v < NUM_LABELS]
    if bad:
        raise InputError(where, f"labels {bad} found; expected only 0 bg, 1 LV, 2 MYO, 3 RV")
    return x


def _as_batch(masks: MaskLike) -> torch.Tensor:
    """(H, W) or (B, F, H, W) -> validated (B, F, H, W) long."""
    x = check_labels(masks)
    if x.ndim == 2:
        x = x[None, None]
    if x.ndim != 4:
        raise InputError("masks", f"expected shape (H, W) or (B, F, H, W), got {tuple(x.shape)}")
    return x


def onehot(masks: torch.Tensor) -> torch.Tensor:
    """masks: (B, F, H, W) long -> (B, 3F, H, W) float in {0, 1}."""
    b, f, h, w = masks.shape
    planes = torch.stack([masks == s for s in STRUCTURES], dim=2)  # (B, F, 3, H, W)
    return planes.reshape(b, 3 * f, h, w).float()


def contours(masks: torch.Tensor) -> torch.Tensor:
    """masks: (B, F, H, W) long -> (B, 3F, H, W) float, 1 on each structure's inner 4-neighbour boundary."""
    inside = onehot(masks)
    padded = F.pad(inside, (1, 1, 1, 1), value=0.0)  # outside the image is background
    # Erosion by the 4-neighbour cross = min of a vertical and a horizontal 3-pixel min-pool.
    erode_v = -F.max_pool2d(-padded[..., :, 1:-1], kernel_size=(3, 1), stride=1)
    erode_h = -F.max_pool2d(-padded[..., 1:-1, :], kernel_size=(1, 3), stride=1)
    return inside - torch.minimum(erode_v, erode_h)


def signed_distance_px(inside: np.ndarray) -> np.ndarray:
    """inside: (N, H, W) bool -> (N, H, W) float64 signed distance in pixels to the edge; +inf where absent."""
    out = np.full(inside.shape, np.inf)
    for i, plane in enumerate(inside):
        if not plane.any():
            continue
        padded = np.pad(plane, 1, constant_values=False)  # outside the image is background
        dist_out = distance_transform_edt(~padded)[1:-1, 1:-1]
        dist_in = distance_transform_edt(padded)[1:-1, 1:-1]
        out[i] = np.where(plane, 0.5 - dist_in, dist_out - 0.5)  # pixel centres -> pixel edge
    return out


def sdf(masks: torch.Tensor) -> torch.Tensor:
    """masks: (B, F, H, W) long -> (B, 3F, H, W) float in (-1, 1]: tanh(signed distance / scale), absent -> +1."""
    b, f, h, w = masks.shape
    inside = onehot(masks).cpu().numpy().astype(bool).reshape(b * 3 * f, h, w)
    scale = SDF_SCALE_FRACTION * min(h, w)
    squashed = np.tanh(signed_distance_px(inside) / scale)  # tanh(inf) = 1: absent structure
    return torch.from_numpy(squashed.reshape(b, 3 * f, h, w)).float().to(masks.device)


def encode_control(masks: MaskLike, kind: str) -> torch.Tensor:
    """masks: (B, F, H, W) (or one (H, W) frame) integer labels -> (B, control_channels(kind, F), H, W) float."""
    check_kind(kind)
    x = _as_batch(masks)
    if kind == "onehot":
        return onehot(x)
    if kind == "contours":
        return contours(x)
    if kind == "sdf":
        return sdf(x)
    return torch.cat([onehot(x), sdf(x)], dim=1)
