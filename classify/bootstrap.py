"""Confidence intervals by resampling SUBJECTS (a subject's slices stay together), and mean/std over seeds."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import pandas as pd

from data.errors import InputError

MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray, Optional[pd.DataFrame]], float]


def _take(values, idx: np.ndarray):
    return None if values is None else (values.iloc[idx] if isinstance(values, pd.DataFrame) else values[idx])


def bootstrap_ci(metric_fn: MetricFn, y_true, y_pred, y_score, groups: Optional[pd.DataFrame], subject_ids,
                 n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """(point, lo, hi): metric_fn(y_true, y_pred, y_score, groups) on all rows and its percentile interval.

    subject_ids=None treats every row as its own subject. Each replicate draws n_subjects subjects with
    replacement and takes all their rows as many times as drawn.
    Replicates where the metric is NaN (e.g. AUROC of a one-class resample) are dropped from the percentiles.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    y_score = None if y_score is None else np.asarray(y_score)
    n = len(y_true)
    for name, values in (("y_pred", y_pred), ("y_score", y_score), ("groups", groups), ("subject_ids", subject_ids)):
        if values is not None and len(values) != n:
            raise InputError(f"bootstrap: {name}", f"expected {n} rows (one per y_true), got {len(values)}")
    if n == 0:
        raise InputError("bootstrap: y_true", "expected at least one row")
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise InputError("bootstrap", f"expected n_boot >= 1 and alpha in (0, 1), got {n_boot}, {alpha}")
    codes, uniques = pd.factorize(np.arange(n) if subject_ids is None else np.asarray(subject_ids))
    rng = np.random.default_rng(seed)
    rows, n_subjects = np.arange(n), len(uniques)
    point = float(metric_fn(y_true, y_pred, y_score, groups))
    stats = np.empty(n_boot)
    for b in range(n_boot):
        # each row repeats as often as its subject was drawn
        times_drawn = np.bincount(rng.integers(0, n_subjects, n_subjects), minlength=n_subjects)
        idx = np.repeat(rows, times_drawn[codes])
        stats[b] = metric_fn(y_true[idx], y_pred[idx], _take(y_score, idx), _take(groups, idx))
    stats = stats[~np.isnan(stats)]
    if len(stats) == 0:
        return point, float("nan"), float("nan")
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(lo), float(hi)


def mean_std_over_seeds(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of one metric over training seeds; std is NaN for one seed."""
    values = np.asarray(values, dtype=float).ravel()
    if len(values) == 0:
        raise InputError("mean_std_over_seeds", "expected at least one value")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return float(np.mean(values)), std
