"""Small ResNet image classifier (BasicBlocks, BatchNorm, stride-2 stages) for the downstream heart-failure task.

widths=(64, 128, 256, 512), blocks_per_stage=(2, 2, 2, 2) is exactly ResNet18 (He et al. 2016); the default is a
slimmer 4-stage net that suits a few thousand 2-channel (ED, ES) slices.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from data.errors import InputError


@dataclass
class ClassifierConfig:
    in_channels: int = 2  # ED and ES slices stacked as channels
    widths: tuple = (16, 32, 64, 128)
    blocks_per_stage: tuple = (1, 1, 1, 1)
    num_classes: int = 2
    dropout: float = 0.0  # before the final linear layer


def check_config(cfg: ClassifierConfig) -> None:
    """Raise InputError naming the bad field instead of failing deep inside a conv layer."""
    if int(cfg.in_channels) < 1:
        raise InputError("classifier.in_channels", f"expected >= 1, got {cfg.in_channels}")
    if len(cfg.widths) == 0 or any(int(w) < 1 for w in cfg.widths):
        raise InputError("classifier.widths", f"expected a non-empty tuple of positive ints, got {cfg.widths}")
    if len(cfg.blocks_per_stage) != len(cfg.widths) or any(int(b) < 1 for b in cfg.blocks_per_stage):
        raise InputError("classifier.blocks_per_stage",
                         f"expected {len(cfg.widths)} positive ints (one per width), got {cfg.blocks_per_stage}")
    if int(cfg.num_classes) < 2:
        raise InputError("classifier.num_classes", f"expected >= 2, got {cfg.num_classes}")
    if not 0.0 <= float(cfg.dropout) < 1.0:
        raise InputError("classifier.dropout", f"expected a probability in [0, 1), got {cfg.dropout}")


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; the shortcut is a strided 1x1 conv when shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, H, W) -> (B, out_ch, H/stride, W/stride)"""
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class ResNetClassifier(nn.Module):
    """Stem (7x7 conv stride 2 + 3x3 max-pool) -> stages (first stride 1, others stride 2) -> avg pool -> linear."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        check_config(cfg)
        self.cfg = cfg
        widths = [int(w) for w in cfg.widths]
        self.stem = nn.Sequential(
            nn.Conv2d(int(cfg.in_channels), widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks, in_ch = [], widths[0]
        for stage, (width, n_blocks) in enumerate(zip(widths, cfg.blocks_per_stage)):
            for i in range(int(n_blocks)):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(in_ch, width, stride))
                in_ch = width
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(float(cfg.dropout))
        self.head = nn.Linear(in_ch, int(cfg.num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> pooled features (B, widths[-1])"""
        return self.blocks(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> logits (B, num_classes)"""
        return self.head(self.dropout(self.features(x)))
