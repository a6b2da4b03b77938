"""A small 2D U-Net trained on real frames: segments generated images (control fidelity) and, through its
bottleneck, gives the domain feature extractor used for FID when no Inception weights are available.

Each ED and ES frame is a separate 1-channel image; pairs (N, 2, S, S) are split into frames and rejoined.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data.errors import InputError


@dataclass
class SegmenterConfig:
    in_channels: int = 1
    base: int = 16  # channels at full resolution; doubled at each level
    depth: int = 3  # number of 2x downsamplings; image side must be divisible by 2**depth
    num_classes: int = 4  # background, LV, MYO, RV


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv -> GroupNorm -> SiLU; GroupNorm because training batches are small."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(8, cout), cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(min(8, cout), cout), nn.SiLU(),
    )


class Segmenter(nn.Module):
    """x: (B, in_channels, S, S) -> logits (B, num_classes, S, S)."""

    def __init__(self, cfg: SegmenterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.base * 2 ** i for i in range(cfg.depth + 1)]
        self.down = nn.ModuleList([conv_block(cfg.in_channels, widths[0])] +
                                  [conv_block(widths[i], widths[i + 1]) for i in range(cfg.depth)])
        self.upsample = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                       for i in reversed(range(cfg.depth))])
        self.up = nn.ModuleList([conv_block(2 * widths[i], widths[i]) for i in reversed(range(cfg.depth))])
        self.head = nn.Conv2d(widths[0], cfg.num_classes, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every level, full resolution first, bottleneck last."""
        skips = [self.down[0](x)]
        for block in self.down[1:]:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        return skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encode(x)
        h = skips[-1]
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips[:-1])):
            h = block(torch.cat([upsample(h), skip], dim=1))
        return self.head(h)


def _check_pairs(images, name: str, cfg: SegmenterConfig) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] != 2 or x.shape[2] != x.shape[3] or len(x) == 0:
        raise InputError(name, f"expected (N, 2, S, S) ED/ES pairs with N >= 1, got shape {x.shape}")
    if x.shape[2] % 2 ** cfg.depth:
        raise InputError(name, f"image side {x.shape[2]} must be divisible by 2**depth = {2 ** cfg.depth}")
    return x


def _frames(pairs: np.ndarray) -> torch.Tensor:
    """(N, 2, S, S) -> (2N, 1, S, S), frames of one pair adjacent."""
    return torch.as_tensor(pairs, dtype=torch.float32).reshape(-1, 1, *pairs.shape[2:])


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice over foreground classes. logits: (B, K, S, S), target: (B, S, S) long."""
    prob = logits.softmax(dim=1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    total = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * inter + 1.0) / (total + 1.0)).mean()


def train_segmenter(images: np.ndarray, masks: np.ndarray, cfg: Optional[SegmenterConfig] = None,
                    steps: int = 1000, lr: float = 2e-3, seed: int = 0, batch_size: int = 16,
                    device: Union[str, torch.device] = "cpu") -> Segmenter:
    """images: (N, 2, S, S) float in [-1, 1], masks: (N, 2, S, S) uint8 labels < num_classes. CE + Dice, Adam."""
    cfg = cfg or SegmenterConfig()
    if cfg.in_channels != 1:
        raise InputError("cfg.in_channels", f"frames are segmented one at a time (1 channel), got {cfg.in_channels}")
    x, y = _check_pairs(images, "images", cfg), _check_pairs(masks, "masks", cfg)
    if x.shape != y.shape:
        raise InputError("masks", f"shape {y.shape} does not match images {x.shape}")
    if not np.isfinite(x).all():
        raise InputError("images", "contains NaN/inf values")
    if y.min() < 0 or y.max() >= cfg.num_classes:
        raise InputError("masks", f"labels must lie in [0, {cfg.num_classes - 1}], got [{y.min()}, {y.max()}]")
    if int(steps) < 1:
        raise InputError("steps", f"need at least 1 step, got {steps}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    frames, labels = _frames(x), _frames(y.astype(np.int64)).squeeze(1).long()
    model = Segmenter(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=int(steps), pct_start=0.1)
    for _ in range(int(steps)):
        idx = torch.randint(len(frames), (min(batch_size, len(frames)),), generator=gen)
        xb, yb = frames[idx], labels[idx]
        # light augmentation: random horizontal / vertical flips (labels are not side-specific under flips)
        if torch.rand(1, generator=gen) < 0.5:
            xb, yb = xb.flip(-1), yb.flip(-1)
        if torch.rand(1, generator=gen) < 0.5:
            xb, yb = xb.flip(-2), yb.flip(-2)
        xb, yb = xb.to(device), yb.to(device)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb) + dice_loss(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def segment(model: Segmenter, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """images: (N, 2, S, S) in [-1, 1] -> masks (N, 2, S, S) uint8 (argmax labels)."""
    x = _check_pairs(images, "images", model.cfg)
    frames, device = _frames(x), next(model.parameters()).device
    model.eval()
    out = [model(frames[i:i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(frames), batch_size)]
    return torch.cat(out).reshape(x.shape).numpy().astype(np.uint8)


@torch.no_grad()
def features(model: Segmenter, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """images: (N, 2, S, S) -> (N, 2 * base * 2**depth) float64: pooled bottleneck of ED then ES."""
    x = _check_pairs(images, "images", model.cfg)
    frames, device = _frames(x), next(model.parameters()).device
    model.eval()
    out = [model.encode(frames[i:i + batch_size].to(device))[-1].mean(dim=(2, 3)).cpu()
           for i in range(0, len(frames), batch_size)]
    return torch.cat(out).reshape(len(x), -1).double().numpy()
