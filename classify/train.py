"""Train the heart-failure classifier: metagroup-balanced sampling, light augmentation, Adam, best-val selection.

The internal validation split is by subject, or by `split_group` where groups_df has it: a synthetic sample's
group is its mask donor, so a donor's re-renders never sit on the other side of the split from its real slices.

Images are (N, 2, S, S) float32 in [-1, 1] (ED and ES slices as channels); labels are 0/1 (1 = heart failure).
All randomness (init, sampling, augmentation, dropout) flows from ClassifierTrainConfig.seed, so a CPU run is reproducible.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import WeightedRandomSampler
from tqdm import tqdm

from classify.augment import augment_batch, classical_augment
from classify.fairness import SENSITIVE_COLUMNS, balanced_accuracy, sensitive_frame
from classify.resnet import ClassifierConfig, ResNetClassifier
from data.prevalence import prevalence_subsample
from data.split import subject_split
from data.errors import InputError
from data.fields import bounded, check_fields
from ddpm.distributed import resolve_device


@dataclass
class ClassifierTrainConfig:
    epochs: int = bounded(10, lo=1)
    batch_size: int = bounded(64, lo=1)
    lr: float = bounded(1e-4, lo=0, lo_open=True)
    weight_decay: float = bounded(0.0, lo=0)
    balanced_sampling: bool = False  # draw each label x metagroup (sex, age group, BMI group by default) equally often
    augment: bool = True  # the light flip/gamma/noise augmentation
    augment_strength: float = bounded(0.0, lo=0, hi=2)  # classical augmentation on top (classify/augment.py); 0 = off
    steps: int = bounded(0, lo=0)  # > 0: exactly this many optimiser steps (epochs then unused); 0: `epochs` passes
    seed: int = bounded(0, lo=0, hi=2 ** 32, hi_open=True)
    # held out by subject when no explicit validation set is given; 0 keeps the last epoch
    val_fraction: float = bounded(0.2, lo=0, hi=1, hi_open=True)
    # positive share of that held-out part after subsampling its subjects (data/prevalence.py); None keeps it all
    val_prevalence: Optional[float] = bounded(None, lo=0, hi=1, lo_open=True, hi_open=True)
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_fields(self, "classifier_train")


def metagroup_keys(df: pd.DataFrame, columns: tuple = SENSITIVE_COLUMNS) -> pd.Series:
    """'label | sex | age_group | bmi_group' per row, e.g. '1 | female | <55 | 25-30'; missing -> 'unknown'.

    df needs 'label' and the group columns: sex, age (or age_group), bmi (or bmi_group) by default; other
    `columns` (e.g. ("health",)) give other metagroups, e.g. '1 | myocardial_infarction'.
    """
    if "label" not in getattr(df, "columns", ()):
        raise InputError("groups", "missing column 'label' needed for metagroups (label x sex x age x BMI)")
    sensitive = sensitive_frame(df, columns)
    labels = ["unknown" if pd.isna(v) else str(int(v)) for v in df["label"]]
    keys = [" | ".join(parts) for parts in zip(labels, *(sensitive[c] for c in columns))]
    return pd.Series(keys, index=df.index, name="metagroup")


def sample_weights(keys) -> np.ndarray:
    """(N,) weight 1 / (size of the row's metagroup): every metagroup then has the same total weight."""
    keys = pd.Series(np.asarray(keys, dtype=object))
    if len(keys) == 0:
        raise InputError("metagroup keys", "expected at least one row")
    return np.array(1.0 / keys.map(keys.value_counts()), dtype=np.float64)


def _as_data(images, labels, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels)).long().ravel()
    if x.ndim != 4:
        raise InputError(f"{where} images", f"expected shape (N, C, S, S), got {tuple(x.shape)}")
    if len(y) != len(x):
        raise InputError(f"{where} labels", f"expected {len(x)} labels (one per image), got {len(y)}")
    if not torch.isfinite(x).all():
        raise InputError(f"{where} images", "contain NaN or infinite values")
    if len(y) and (y.min() < 0 or y.max() > 1):
        raise InputError(f"{where} labels", f"expected 0/1, got values in [{int(y.min())}, {int(y.max())}]")
    return x, y


@torch.no_grad()
def predict_proba(model: nn.Module, images, batch_size: int = 256) -> np.ndarray:
    """images: (N, C, S, S) -> (N,) P(positive), in eval mode (the model's mode is restored after)."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs = [F.softmax(model(x[i:i + batch_size].to(device)), dim=1)[:, 1].cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(probs).double().numpy() if probs else np.zeros(0)


def validation_split(groups_df: pd.DataFrame, labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train_idx, val_idx), about `fraction` of the split groups in validation, stratified by label.

    A row's group is its `split_group` (a synthetic sample's mask donor), else its subject_id, else the row itself;
    every row of a group lands on the same side. A group's stratum is 1 when any of its rows is positive.
    """
    groups_df = groups_df.reset_index(drop=True)
    column = "split_group" if "split_group" in groups_df else "subject_id" if "subject_id" in groups_df else None
    ids = groups_df[column].astype(str).to_numpy() if column else np.arange(len(groups_df)).astype(str)
    strata = pd.Series(np.asarray(labels)).groupby(ids).transform("max").to_numpy()
    return subject_split(ids, strata, fraction, seed)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps of one pass over n rows (a last batch of 1 is skipped: BatchNorm needs 2+ samples)."""
    return n // batch_size + int(n % batch_size >= 2)


def planned_steps(groups_df: pd.DataFrame, labels, cfg: "ClassifierTrainConfig") -> int:
    """The optimiser steps train_classifier(images, labels, groups_df, cfg) takes (internal split included)."""
    n = len(groups_df)
    if cfg.val_fraction > 0:
        n = len(validation_split(groups_df, labels, cfg.val_fraction, cfg.seed)[0])
    return int(cfg.steps) if cfg.steps > 0 else cfg.epochs * steps_per_epoch(n, cfg.batch_size)


def _epoch_order(n: int, weights: Optional[np.ndarray], generator: torch.Generator) -> torch.Tensor:
    if weights is None:
        return torch.randperm(n, generator=generator)
    return torch.tensor(list(WeightedRandomSampler(weights, n, replacement=True, generator=generator)))


def train_classifier(images, labels, groups_df: pd.DataFrame, cfg: ClassifierTrainConfig, val=None, progress: bool = False,
                     model_cfg: Optional[ClassifierConfig] = None,
                     metagroups: tuple = SENSITIVE_COLUMNS) -> tuple[ResNetClassifier, dict]:
    """Train on images (N, C, S, S) float32 and labels (N,) 0/1; groups_df (N rows) has the `metagroups` columns
    (sex, age(_group), bmi(_group) by default; balanced sampling draws each label x metagroup equally often) and
    optionally subject_id / split_group (for the internal split, see validation_split). val = (images, labels) or
    None. cfg.steps > 0 trains exactly that many optimiser steps (planned_steps counts them beforehand).

    Returns the model of the epoch with the best validation balanced accuracy (ties: lowest validation loss), in
    eval mode, and a history dict: per-epoch lists epoch, train_loss, val_balanced_accuracy, val_loss, plus
    best_epoch, best_val_balanced_accuracy, steps (optimiser steps taken) and the validation rows n_val,
    n_val_positive.
    """
    x, y = _as_data(images, labels, "train")
    if len(groups_df) != len(x):
        raise InputError("groups_df", f"expected {len(x)} rows (one per image), got {len(groups_df)}")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise InputError("ClassifierTrainConfig", f"expected epochs >= 1 and batch_size >= 2, got {cfg.epochs}, {cfg.batch_size}")
    groups_df = groups_df.reset_index(drop=True)
    if val is not None:
        val_x, val_y = _as_data(*val, "val")
    elif cfg.val_fraction > 0:
        train_idx, val_idx = validation_split(groups_df, y.numpy(), cfg.val_fraction, cfg.seed)
        if cfg.val_prevalence is not None:  # the surplus subjects of the held-out part are left out of both sides
            ids = groups_df["subject_id"].to_numpy() if "subject_id" in groups_df else np.arange(len(x))
            val_idx = val_idx[prevalence_subsample(ids[val_idx], y.numpy()[val_idx], cfg.val_prevalence, cfg.seed,
                                                   "classifier_train.val_prevalence")]
        val_x, val_y = x[val_idx], y[val_idx]
        x, y, groups_df = x[train_idx], y[train_idx], groups_df.iloc[train_idx].reset_index(drop=True)
    else:
        val_x = val_y = None
    weights = sample_weights(metagroup_keys(groups_df.assign(label=y.numpy()), metagroups)) \
        if cfg.balanced_sampling else None
    device = resolve_device(cfg.device, "classifier_train.device")
    model_cfg = model_cfg or ClassifierConfig(in_channels=x.shape[1])
    history = {"epoch": [], "train_loss": [], "val_balanced_accuracy": [], "val_loss": [], "best_epoch": None,
               "best_val_balanced_accuracy": float("nan"), "steps": 0, "n_val": 0 if val_y is None else len(val_y),
               "n_val_positive": 0 if val_y is None else int(val_y.sum())}
    per_epoch = steps_per_epoch(len(x), cfg.batch_size)
    budget = int(cfg.steps) if cfg.steps > 0 else cfg.epochs * per_epoch
    epochs = cfg.epochs if cfg.steps == 0 else max(math.ceil(budget / max(per_epoch, 1)), 1)
    # fork_rng: seeding init and dropout must not change the caller's global RNG
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else None):
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        model = ResNetClassifier(model_cfg).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best_state, best_score = None, (-math.inf, -math.inf)
        for epoch in tqdm(range(epochs), disable=not progress, desc="classifier"):
            model.train()
            order, losses = _epoch_order(len(x), weights, generator), []
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                if len(idx) < 2 or history["steps"] >= budget:  # BatchNorm needs 2+ samples in training mode
                    continue
                xb = augment_batch(x[idx], generator) if cfg.augment else x[idx]
                xb = classical_augment(xb, generator, cfg.augment_strength)[0]
                loss = F.cross_entropy(model(xb.to(device)), y[idx].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                history["steps"] += 1
                losses.append(loss.item())
            score, val_loss = float("nan"), float("nan")
            if val_x is not None and len(val_x):
                probs = predict_proba(model, val_x).clip(1e-12, 1 - 1e-12)
                score = balanced_accuracy(val_y.numpy(), (probs >= 0.5).astype(int))
                val_loss = float(-np.mean(np.where(val_y.numpy() == 1, np.log(probs), np.log1p(-probs))))
            history["epoch"].append(epoch)
            history["train_loss"].append(float(np.mean(losses)) if losses else float("nan"))
            history["val_balanced_accuracy"].append(score)
            history["val_loss"].append(val_loss)
            # ties in balanced accuracy (common on small validation sets) go to the lower validation loss
            if val_x is None or (not math.isnan(score) and (score, -val_loss) > best_score):
                best_score, history["best_epoch"] = (score, -val_loss), epoch
                best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    has_best = best_state is not None and val_x is not None
    history["best_val_balanced_accuracy"] = best_score[0] if has_best else float("nan")
    return model.eval(), history
