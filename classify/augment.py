"""Classifier augmentation in pure torch: the light default every arm gets, and the classical one of the
"oversampled" baseline (random affine + intensity scale/gamma + noise), the same draw for every channel of a sample.

Images are (B, C, S, S) in [-1, 1] (C = 2: ED and ES); masks (B, C, S, S) integer labels follow the image's
geometric transform by nearest-neighbour sampling, so a mask stays aligned with its image.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

# Ranges at strength 1 (the "oversampled" arm's default): small, as in classical cardiac-MR augmentation.
MAX_ROTATION_DEG = 15.0
MAX_TRANSLATION = 0.08  # fraction of the image side
MAX_LOG_SCALE = math.log(1.10)
MAX_LOG_INTENSITY = math.log(1.15)
MAX_LOG_GAMMA = math.log(1.30)
NOISE_STD = 0.03


def augment_batch(x: torch.Tensor, generator: torch.Generator, noise_std: float = 0.02,
                  max_gamma: float = 1.25) -> torch.Tensor:
    """x: (B, C, S, S) in [-1, 1] -> random left-right flip, gamma in [1/max_gamma, max_gamma] on [0, 1], noise."""
    b = x.shape[0]
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    gamma = torch.exp((2 * torch.rand(b, generator=generator) - 1) * math.log(max_gamma)).to(x.device)
    x = ((x + 1) / 2).clamp(0, 1) ** gamma[:, None, None, None] * 2 - 1
    return x + noise_std * torch.randn(x.shape, generator=generator).to(x.device)


def _uniform(b: int, generator: torch.Generator, half_width: float) -> torch.Tensor:
    return (2 * torch.rand(b, generator=generator, dtype=torch.float64) - 1) * half_width


def random_affine(b: int, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """(B, 2, 3) affine_grid matrices: rotation, isotropic scale and translation, each uniform in +-strength x range."""
    angle = _uniform(b, generator, math.radians(MAX_ROTATION_DEG) * strength)
    scale = torch.exp(_uniform(b, generator, MAX_LOG_SCALE * strength))
    shift = torch.stack([_uniform(b, generator, 2 * MAX_TRANSLATION * strength) for _ in range(2)], dim=1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1).float()


def apply_affine(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear", fill: float = -1.0) -> torch.Tensor:
    """x: (B, C, S, S), theta (B, 2, 3) -> every channel of sample i moved by theta[i]; outside the image -> fill."""
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    out = F.grid_sample(x.float() - fill, grid, mode=mode, padding_mode="zeros", align_corners=False) + fill
    return out.to(x.dtype) if mode == "nearest" else out


def classical_augment(x: torch.Tensor, generator: torch.Generator, strength: float = 1.0,
                      masks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """x: (B, C, S, S) in [-1, 1] -> (augmented x, masks moved alike or None). strength 0 is the identity.

    Per sample, one draw shared by all its channels: affine (rotation, scale, translation), intensity scale and
    gamma on [0, 1], Gaussian noise; masks take only the affine (nearest neighbour, background outside).
    """
    if strength <= 0:
        return x, masks
    b = x.shape[0]
    theta = random_affine(b, generator, strength)
    x = apply_affine(x, theta)
    intensity = torch.exp(_uniform(b, generator, MAX_LOG_INTENSITY * strength)).float().to(x.device)
    gamma = torch.exp(_uniform(b, generator, MAX_LOG_GAMMA * strength)).float().to(x.device)
    x = (((x + 1) / 2).clamp(0, 1) ** gamma[:, None, None, None] * intensity[:, None, None, None]).clamp(0, 1) * 2 - 1
    x = x + NOISE_STD * strength * torch.randn(x.shape, generator=generator).to(x.device)
    moved = None if masks is None else apply_affine(masks, theta, mode="nearest", fill=0.0)
    return x, moved
