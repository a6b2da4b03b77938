"""Real-vs-synthetic discriminator on the images that go into training, with donor-grouped cross-validation.

A real subject and every synthetic image rendered from its masks form one group, and a group sits in one fold
only: otherwise the discriminator could match a re-render to its donor instead of telling real from synthetic.
Out-of-fold scores give the AUC per cell and overall (interval: bootstrap over groups). The same scores show the
shortcut of issue 13: inside a subgroup (the cell without health) the label's share differs between synthetic
and real images, so a score that tells them apart also predicts the label there.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import pandas as pd
import torch

from classify.bootstrap import bootstrap_ci
from classify.fairness import auroc
from classify.train import predict_proba
from data.errors import InputError
from evaluation.attributes import train_one


def grouped_folds(groups: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
    """(N,) group ids -> (N,) fold in [0, k): every item of a group in one fold; folds balanced by item count
    (largest groups first, each to the currently smallest fold; ties in random order)."""
    codes, uniques = pd.factorize(np.asarray([str(g) for g in groups]))
    if int(k) < 2 or len(uniques) < int(k):
        raise InputError("discriminator folds", f"expected 2 <= k <= groups ({len(uniques)}), got k={k}")
    sizes = np.bincount(codes)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(sizes)), -sizes))
    fold_of_group, load = np.empty(len(sizes), dtype=np.int64), np.zeros(int(k))
    for g in order:
        fold_of_group[g] = int(np.argmin(load))
        load[fold_of_group[g]] += sizes[g]
    return fold_of_group[codes]


def out_of_fold_scores(images: np.ndarray, is_synthetic: np.ndarray, groups: Sequence[str], k: int, epochs: int,
                       seed: int = 0, device: Union[str, torch.device] = "cpu") -> np.ndarray:
    """images (N, 2, S, S), is_synthetic (N,) 0/1 -> (N,) P(synthetic) from a ResNet that never saw the item's
    group (k donor-grouped folds; class-weighted loss, so the real/synthetic ratio does not set the threshold)."""
    y = np.asarray(is_synthetic, dtype=np.int64)
    folds, scores = grouped_folds(groups, k, seed), np.full(len(y), np.nan)
    for fold in range(int(k)):
        test = folds == fold
        model = train_one(np.asarray(images)[~test], y[~test], 2, epochs, 32, 1e-3, seed + fold, device)
        scores[test] = predict_proba(model, np.asarray(images)[test])
    return scores


def _auc(y_true, y_pred, y_score, groups) -> float:
    return auroc(y_true, y_pred, y_score)


def _within_auc(y_true, y_pred, y_score, groups: pd.DataFrame) -> float:
    """AUC over (positive, negative) pairs of the same subgroup only: the pairs-weighted mean of subgroup AUCs."""
    total, weight = 0.0, 0.0
    for idx in groups.groupby("subgroup").indices.values():
        yt = np.asarray(y_true)[idx]
        pairs = float(yt.sum() * (len(yt) - yt.sum()))
        if pairs:
            total += pairs * auroc(yt, None, np.asarray(y_score)[idx])
            weight += pairs
    return total / weight if weight else float("nan")


def _interval(metric, y: np.ndarray, scores: np.ndarray, frame, groups: np.ndarray, n_boot: int, seed: int) -> dict:
    point, lo, hi = bootstrap_ci(metric, y, y, scores, frame, groups, n_boot=n_boot, seed=seed)
    return {"auc": point, "lo": lo, "hi": hi}


def discriminator_report(scores: np.ndarray, is_synthetic: np.ndarray, groups: Sequence[str], cells: Sequence[str],
                         subgroups: Sequence[str], positive: np.ndarray, n_boot: int = 200, seed: int = 0) -> dict:
    """Out-of-fold P(synthetic) -> AUC real vs synthetic overall and per cell (95 % bootstrap over groups), and per
    subgroup P(label | synthetic), P(label | real) and the AUC of the score for the label (the shortcut)."""
    y, groups = np.asarray(is_synthetic, dtype=np.int64), np.asarray([str(g) for g in groups])
    cells, subgroups, positive = np.asarray(cells, object), np.asarray(subgroups, object), np.asarray(positive, int)
    out = {"overall": {"n_real": int((y == 0).sum()), "n_synthetic": int(y.sum()),
                       **_interval(_auc, y, scores, None, groups, n_boot, seed)}, "per_cell": {}, "shortcut": {}}
    for cell in sorted(set(cells)):
        idx = np.flatnonzero(cells == cell)
        entry = {"n_real": int((y[idx] == 0).sum()), "n_synthetic": int(y[idx].sum())}
        if min(entry.values()) > 0:
            entry |= _interval(_auc, y[idx], scores[idx], None, groups[idx], n_boot, seed)
        out["per_cell"][cell] = entry
    for group in sorted(set(subgroups)):
        idx = np.flatnonzero(subgroups == group)
        real, syn = idx[y[idx] == 0], idx[y[idx] == 1]
        out["shortcut"][group] = {
            "n_real": len(real), "n_synthetic": len(syn),
            "p_label_real": float(positive[real].mean()) if len(real) else None,
            "p_label_synthetic": float(positive[syn].mean()) if len(syn) else None,
            "score_predicts_label_auc": auroc(positive[idx], None, scores[idx])}
    frame = pd.DataFrame({"subgroup": subgroups})
    out["shortcut_within_subgroups"] = _interval(_within_auc, positive, scores, frame, groups, n_boot, seed)
    return out
