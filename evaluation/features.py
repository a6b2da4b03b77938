"""Which network turns images into FID/KID features: the FID Inception-v3 (when its weights are given) or the
encoder of the domain segmenter trained here on real images. Every report names the extractor it used, because
FID numbers from different extractors do not compare.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from tqdm import tqdm

from data.errors import InputError
from evaluation import segmenter as seg
from evaluation.inception import FIDInception, inception_features, load_fid_weights

KINDS = ("auto", "inception", "segmenter")
NO_WEIGHTS_NOTE = ("no FID Inception weights were given (none ship with cardiac-ldm and nothing is downloaded): "
                   "FID/KID use the domain segmenter's encoder, so they compare runs of this project only, "
                   "not published FID numbers")
INCEPTION_NOTE = "standard FID Inception-v3 features (pytorch-fid weights); an ImageNet network on MRI"


@dataclass
class Extractor:
    """images (N, 2, S, S) in [-1, 1] -> (N, D) float64 features, in batches under torch.no_grad."""

    name: str
    note: str
    embed: Callable[[np.ndarray], np.ndarray]  # one batch (B, 2, S, S) -> (B, D)
    batch_size: int = 64
    progress: bool = True

    def __call__(self, images: np.ndarray, desc: str = "features") -> np.ndarray:
        x = np.asarray(images, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 2 or len(x) == 0:
            raise InputError(desc, f"expected images (N, 2, S, S) with N >= 1, got shape {x.shape}")
        starts = range(0, len(x), self.batch_size)
        with torch.no_grad():
            out = [self.embed(x[i:i + self.batch_size]) for i in tqdm(starts, desc=f"{desc} ({self.name.split(' (')[0]})",
                                                                     unit="batch", disable=not self.progress)]
        return np.concatenate(out).astype(np.float64)


def inception_extractor(weights: Union[str, Path], device: Union[str, torch.device] = "cpu",
                        batch_size: int = 32, progress: bool = True) -> Extractor:
    """FID Inception-v3 with pytorch-fid's weights file -> 2048-d pool features."""
    model = load_fid_weights(FIDInception(), weights).to(device)
    return Extractor(f"FID-Inception-v3 (pt_inception-2015-12-05, {Path(weights).name})", INCEPTION_NOTE,
                     lambda x: inception_features(model, x, batch_size=batch_size, device=device),
                     batch_size, progress)


def segmenter_extractor(model: seg.Segmenter, n_train_images: Optional[int] = None, batch_size: int = 64,
                        progress: bool = True) -> Extractor:
    """Pooled bottleneck of the domain segmenter, ED then ES -> 2 * base * 2**depth features."""
    trained_on = "" if n_train_images is None else f" on {int(n_train_images)} real images"
    return Extractor(f"domain segmenter encoder (trained here{trained_on})", NO_WEIGHTS_NOTE,
                     lambda x: seg.features(model, x, batch_size=batch_size), batch_size, progress)


def make_extractor(kind: str = "auto", inception_weights: Optional[Union[str, Path]] = None,
                   segmenter: Optional[seg.Segmenter] = None, n_train_images: Optional[int] = None,
                   device: Union[str, torch.device] = "cpu", progress: bool = True) -> Extractor:
    """kind "auto": Inception when weights are given, else the segmenter; "inception" / "segmenter" insist."""
    if kind not in KINDS:
        raise InputError("feature extractor", f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "inception" or (kind == "auto" and inception_weights is not None):
        if inception_weights is None:
            raise InputError("--inception-weights", "Inception features need pytorch-fid's "
                                                    "pt_inception-2015-12-05-6726825d.pth; none is on this machine")
        return inception_extractor(inception_weights, device, progress=progress)
    if segmenter is None:
        raise InputError("feature extractor", "no Inception weights and no trained segmenter: nothing to embed with")
    return segmenter_extractor(segmenter, n_train_images, progress=progress)
