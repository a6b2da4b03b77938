"""Attribute fidelity: small ResNet classifiers, one per attribute (sex, age decade, BMI category, health, slice
position where the prompts carry it), trained on
real images; their accuracy on generated images for the PROMPTED attributes is set next to their accuracy on real
test images (the ceiling a perfect generator would reach).

The prompt carries bins only, so the default age attribute is the prompt's decade; "age_group" (<55, 55-64, 65+) is
also available and is known for a prompt only when its decade lies wholly inside one group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from classify.resnet import ClassifierConfig, ResNetClassifier
from classify.train import augment_batch
from data.attributes import age_decade, age_group, bmi_category
from data.errors import InputError
from data.prompts import prompt_to_attributes

DEFAULT_ATTRIBUTES = ("sex", "age_decade", "bmi_category", "health", "slice_position")
KNOWN_ATTRIBUTES = ("sex", "age_decade", "age_group", "bmi_category", "health", "slice_position")


def _number(value) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _group_of_decade(decade: Optional[int]) -> Optional[str]:
    """'<55' / '55-64' / '65+' when the whole decade falls in one group, else None (50s and 60s straddle a cut)."""
    if decade is None:
        return None
    first, last = age_group(float(decade)), age_group(decade + 9.99)
    return first if first == last else None


def attribute_labels(attributes: pd.DataFrame, use_numbers: bool = True) -> pd.DataFrame:
    """Rows with sex/age/bmi/health/prompt -> one label column per KNOWN_ATTRIBUTES (str, None when unknown).

    use_numbers: take age/BMI bins from the numbers where present (real patients); False reads everything from
    the prompt (generated images: the prompt is all the generator was told).
    """
    rows = []
    for rec in attributes.to_dict("records"):
        parsed = prompt_to_attributes("" if rec.get("prompt") is None else str(rec["prompt"]))
        age = _number(rec.get("age")) if use_numbers else None
        bmi = _number(rec.get("bmi")) if use_numbers else None
        decade = age_decade(age) if age is not None else parsed.age_decade
        rows.append({
            "sex": (rec.get("sex") if use_numbers else None) or parsed.sex,
            "age_decade": None if decade is None else f"{decade}s",
            "age_group": age_group(age) if age is not None else _group_of_decade(parsed.age_decade),
            "bmi_category": bmi_category(bmi) if bmi is not None else parsed.bmi_category,
            "health": (rec.get("health") if use_numbers else None) or parsed.health,
            "slice_position": parsed.position,  # a slice's, not a patient's: only ever in the prompt
        })
    return pd.DataFrame(rows, columns=list(KNOWN_ATTRIBUTES), dtype=object)


@dataclass
class AttributeClassifier:
    """A classifier of one attribute over vocab (class i = vocab[i]), or skipped with the reason."""

    name: str
    vocab: tuple[str, ...] = ()
    model: Optional[ResNetClassifier] = None
    n_train: int = 0
    skipped: Optional[str] = None


def _check_attrs(attrs: Sequence[str]) -> tuple[str, ...]:
    unknown = [a for a in attrs if a not in KNOWN_ATTRIBUTES]
    if unknown:
        raise InputError("attributes", f"unknown attribute(s) {unknown}; expected some of {', '.join(KNOWN_ATTRIBUTES)}")
    return tuple(attrs)


def fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, epochs: int, batch_size: int, lr: float,
        generator: torch.Generator, device: Union[str, torch.device]) -> torch.nn.Module:
    """Adam on loss_fn(logits, targets) over augmented shuffled batches of x (N, C, S, S), y (N, ...); -> eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(int(epochs)):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples in training mode
                continue
            loss = loss_fn(model(augment_batch(x[idx], generator).to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def train_one(images: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int, batch_size: int, lr: float,
              seed: int, device: Union[str, torch.device]) -> ResNetClassifier:
    """images: (N, 2, S, S), labels: (N,) in [0, num_classes). Class-weighted cross entropy (rare classes count)."""
    x, y = torch.as_tensor(images, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(y, minlength=num_classes).double()
    weight = (len(y) / (num_classes * counts.clamp(min=1))).float().to(device)
    with torch.random.fork_rng(devices=[]):  # seeding init must not move the caller's RNG
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = ResNetClassifier(ClassifierConfig(in_channels=x.shape[1], num_classes=num_classes)).to(device)
        return fit(model, x, y, lambda logits, target: F.cross_entropy(logits, target, weight), epochs, batch_size,
                   lr, generator, device)


def train_attribute_classifiers(real_train, attrs: Sequence[str] = DEFAULT_ATTRIBUTES, epochs: int = 5,
                                batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                                device: Union[str, torch.device] = "cpu",
                                progress: bool = False) -> dict[str, AttributeClassifier]:
    """real_train: SliceSet/ImageSet (images (N, 2, S, S), attributes) -> {attribute: AttributeClassifier}.

    An attribute the cohort lacks (e.g. ACDC has no sex/age/BMI) or with a single class is skipped, with the reason.
    """
    if int(epochs) < 1 or int(batch_size) < 2:
        raise InputError("attribute classifiers", f"expected epochs >= 1 and batch_size >= 2, got {epochs}, {batch_size}")
    labels = attribute_labels(real_train.attributes, use_numbers=True)
    out = {}
    for name in tqdm(_check_attrs(attrs), desc="attribute classifiers", disable=not progress):
        known = labels[name].notna().to_numpy()
        vocab = tuple(sorted(set(labels[name][known])))
        if not known.any():
            out[name] = AttributeClassifier(name, skipped=f"the real training set carries no {name}")
            continue
        if len(vocab) < 2:
            out[name] = AttributeClassifier(name, vocab, skipped=f"only one {name} class ({vocab[0]}) in the real "
                                                                 "training set")
            continue
        y = np.array([vocab.index(v) for v in labels[name][known]])
        model = train_one(real_train.images[known], y, len(vocab), epochs, batch_size, lr, seed, device)
        out[name] = AttributeClassifier(name, vocab, model, int(known.sum()))
    return out


@torch.no_grad()
def predict(model: ResNetClassifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """images: (N, 2, S, S) -> (N,) predicted class indices."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    device = next(model.parameters()).device
    model.eval()
    out = [model(x[i:i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def attribute_accuracy(models: dict[str, AttributeClassifier], images: np.ndarray, attributes: pd.DataFrame,
                       prompted: bool = False) -> dict[str, dict]:
    """Accuracy of each classifier on images (N, 2, S, S) against the rows' labels (prompted=True: from the prompt).

    Per attribute: accuracy, chance (share of the most common class: what always guessing it scores), n (images
    with a label the classifier knows), n_unlabelled, n_unseen_class (labels absent from the real training set);
    or {"skipped": reason}.
    """
    if len(images) != len(attributes):
        raise InputError("attributes", f"expected {len(images)} rows (one per image), got {len(attributes)}")
    labels = attribute_labels(attributes, use_numbers=not prompted)
    out = {}
    for name, clf in models.items():
        if clf.skipped is not None:
            out[name] = {"skipped": clf.skipped}
            continue
        column = labels[name]
        known = column.notna().to_numpy()
        seen = known & column.isin(clf.vocab).to_numpy()
        base = {"n_unlabelled": int((~known).sum()), "n_unseen_class": int((known & ~seen).sum())}
        if not seen.any():
            out[name] = {**base, "skipped": f"no image has a {name} the classifier knows"}
            continue
        y = np.array([clf.vocab.index(v) for v in column[seen]])
        pred = predict(clf.model, np.asarray(images)[seen])
        chance = float(np.bincount(y).max() / len(y))
        out[name] = {"accuracy": float((pred == y).mean()), "chance": chance, "n": int(seen.sum()), **base}
    return out
