"""One ResNet with one softmax head per attribute (sex, age group, BMI category, health), trained on real images.

Its heads recover the prompted attributes of generated images; its pooled penultimate features are an appearance
feature space for FID and nearest-neighbour distances that is not the Dice segmenter's. One network instead of one
per attribute: the training-set evaluation must fit a few CPU minutes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from classify.resnet import ClassifierConfig, ResNetClassifier
from data.errors import InputError
from evaluation.attributes import fit

IGNORE = -100  # an unknown label (ACDC has no sex or age) adds no loss


@dataclass
class AttributeNet:
    """heads[name] = vocab (class i = vocab[i]); logits of head k are the k-th slice of the model's output."""

    heads: dict[str, tuple[str, ...]]
    model: ResNetClassifier
    n_train: int

    def _slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, vocab in self.heads.items():
            out[name] = slice(start, start + len(vocab))
            start += len(vocab)
        return out

    @torch.no_grad()
    def _run(self, images: np.ndarray, fn, batch_size: int = 256) -> np.ndarray:
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        device = next(self.model.parameters()).device
        self.model.eval()
        out = [fn(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out).double().numpy()

    def features(self, images: np.ndarray) -> np.ndarray:
        """images (N, 2, S, S) -> pooled penultimate features (N, D) float64."""
        return self._run(images, self.model.features)

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images (N, 2, S, S) -> {attribute: (N,) predicted labels (str)}."""
        logits = self._run(images, self.model)
        return {name: np.asarray(self.heads[name], dtype=object)[logits[:, s].argmax(axis=1)]
                for name, s in self._slices().items()}


def _codes(labels: pd.DataFrame, names: Sequence[str]) -> tuple[dict[str, tuple[str, ...]], np.ndarray]:
    """Label columns -> ({name: vocab} of attributes with >= 2 classes, (N, heads) class codes, IGNORE if unknown)."""
    heads, columns = {}, []
    for name in names:
        known = labels[name].map(lambda v: isinstance(v, str))
        vocab = tuple(sorted(set(labels[name][known])))
        if len(vocab) < 2:
            continue  # nothing to learn: the cohort lacks it or has one class
        heads[name] = vocab
        columns.append([vocab.index(v) if isinstance(v, str) else IGNORE for v in labels[name]])
    return heads, np.array(columns, dtype=np.int64).T.reshape(len(labels), len(heads))


def train_attribute_net(images: np.ndarray, labels: pd.DataFrame, names: Sequence[str], epochs: int, seed: int = 0,
                        batch_size: int = 32, lr: float = 1e-3,
                        device: Union[str, torch.device] = "cpu") -> AttributeNet:
    """images: (N, 2, S, S) real images; labels: N rows with a str (or None) column per name. Each head's loss is
    class-weighted cross entropy (a rare class counts as much as a common one)."""
    heads, y = _codes(labels, names)
    if not heads:
        raise InputError("attribute labels", f"none of {', '.join(names)} has two classes in the real training set")
    x, y = torch.as_tensor(np.asarray(images, dtype=np.float32)), torch.as_tensor(y)
    weights = []
    for k, vocab in enumerate(heads.values()):
        counts = torch.bincount(y[:, k][y[:, k] >= 0], minlength=len(vocab)).double()
        weights.append((counts.sum() / (len(vocab) * counts.clamp(min=1))).float().to(device))
    with torch.random.fork_rng(devices=[]):  # seeding init must not move the caller's RNG
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = ResNetClassifier(ClassifierConfig(in_channels=x.shape[1], num_classes=sum(map(len, heads.values()))))
        net = AttributeNet(heads, model.to(device), len(x))
        slices = list(net._slices().values())

        def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return sum(F.cross_entropy(logits[:, s], target[:, k], weights[k], ignore_index=IGNORE)
                       for k, s in enumerate(slices) if (target[:, k] >= 0).any())

        fit(model, x, y, loss_fn, epochs, batch_size, lr, generator, device)
    return net
