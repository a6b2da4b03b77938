"""Two non-training baselines: a decision threshold chosen on validation, and the EF-from-masks rule.

Both return scores in [0, 1] that the experiment thresholds at 0.5 like every arm's: the threshold arm shifts the
classifier's logit by the chosen threshold's (logit adjustment; AUROC unchanged), the EF rule maps the subject's
area EF proxy through a logistic centred on its fitted cut-off. Both cut-offs maximise balanced accuracy on data
the test set never joins: the arm's own validation subjects, resp. the real training subjects.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from classify.fairness import balanced_accuracy
from data.cohort import LV
from data.errors import InputError
from data.slices import SliceSet

EF_SCALE = 0.05  # EF-proxy units per logit of the rule's score (only its sign decides; AUROC ignores the scale)


def best_threshold(y_true, scores) -> float:
    """Cut-off t (positive where score >= t) maximising balanced accuracy on (y_true, scores); candidates are
    the midpoints between consecutive distinct scores and one beyond each end; ties go to the one nearest 0.5."""
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if len(scores) == 0 or len(np.unique(y_true)) < 2:
        raise InputError("threshold", "choosing a threshold needs scores of both classes")
    s = np.unique(scores)
    candidates = np.concatenate([[s[0] - 1.0], (s[:-1] + s[1:]) / 2, [s[-1] + 1.0]])
    ba = balanced_accuracy(y_true, (scores[:, None] >= candidates[None, :]).astype(int))
    best = np.flatnonzero(ba >= ba.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def shift_to_threshold(probs, threshold: float) -> np.ndarray:
    """(N,) probabilities -> sigmoid(logit(p) - logit(t)): >= 0.5 exactly where p >= t (logit adjustment)."""
    eps = 1e-12
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    t = float(np.clip(threshold, eps, 1 - eps))
    return 1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) - np.log(t / (1 - t)))))


def central_rows(slices: SliceSet) -> pd.Series:
    """subject_id -> row of its central slice (median slice_index; the lower one of an even count)."""
    frame = pd.DataFrame({"subject_id": slices.subject_ids, "z": slices.slice_index, "row": np.arange(len(slices))})
    frame = frame.sort_values(["subject_id", "z", "row"])
    return frame.groupby("subject_id", sort=False)["row"].agg(lambda rows: rows.iloc[(len(rows) - 1) // 2])


def subject_ef(slices: SliceSet) -> pd.Series:
    """subject_id -> area EF proxy (LV_ED - LV_ES) / LV_ED of its central slice's masks (geometry/descriptors'
    ef_proxy, counted in pixels: the pixel size cancels); NaN where the ED mask has no LV."""
    rows = central_rows(slices)
    masks = slices.masks[rows.to_numpy()]
    ed, es = (masks[:, 0] == LV).sum(axis=(1, 2)).astype(float), (masks[:, 1] == LV).sum(axis=(1, 2)).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ef = np.where(ed > 0, (ed - es) / ed, np.nan)
    return pd.Series(ef, index=rows.index, name="ef_proxy")


def fit_ef_rule(train: SliceSet, labels) -> float:
    """EF cut-off (positive where EF <= cut-off) maximising balanced accuracy over the TRAINING subjects."""
    ef = subject_ef(train)
    per_subject = pd.Series(np.asarray(labels)).groupby(np.asarray(train.subject_ids)).max()
    y = per_subject.loc[ef.index].to_numpy()
    known = ~np.isnan(ef.to_numpy())
    return -best_threshold(y[known], -ef.to_numpy()[known])


def ef_rule_scores(slices: SliceSet, cutoff: float) -> np.ndarray:
    """(N,) one score per row from its subject's EF: >= 0.5 exactly where EF <= cutoff; no LV at ED -> 0."""
    ef = subject_ef(slices).reindex(slices.subject_ids).to_numpy()
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(ef), 0.0, 1.0 / (1.0 + np.exp(-(cutoff - ef) / EF_SCALE)))
