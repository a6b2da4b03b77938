"""Prevalence control (the method's protocol: train / validation / test at 0.25 / 0.10 / 0.01 heart failure):
subsample a split's subjects so the positives make up a given share of them.

Subjects, not rows, are kept or dropped (every row of a subject goes together; one label per subject). The class that
is already scarce relative to the target keeps every subject; the other keeps a seeded random subset. A test set at
prevalence p needs about k / p subjects to hold k positives: 0.01 needs 5,000 subjects for 50 positives.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from data.errors import InputError


def subjects_for_positives(n_positive: int, prevalence: float) -> int:
    """Subjects a split at `prevalence` needs to hold `n_positive` positive subjects."""
    return math.ceil(n_positive / prevalence - 1e-9)


def prevalence_subsample(subject_ids, labels, prevalence: float, seed: int, where: str = "prevalence") -> np.ndarray:
    """subject_ids, labels: (N,) per row (labels 0/1) -> sorted row indices of the subjects kept, whose positive
    share is `prevalence` up to rounding one subject: every subject of the class that is scarce relative to it, a
    seeded random subset of the other class."""
    ids, y = np.asarray(subject_ids).astype(str), np.asarray(labels).astype(int)
    if len(ids) != len(y):
        raise InputError(where, f"{len(ids)} subject ids but {len(y)} labels")
    if not 0.0 < float(prevalence) < 1.0:
        raise InputError(where, f"expected a prevalence in (0, 1), got {prevalence}")
    per_subject = pd.Series(y).groupby(ids, sort=True).agg(["min", "max"])
    mixed = per_subject.index[per_subject["min"] != per_subject["max"]]
    if len(mixed):
        raise InputError(where, f"subject {mixed[0]!r} has rows with both labels; expected one label per subject")
    subjects, subject_label = per_subject.index.to_numpy(), per_subject["max"].to_numpy()
    positives, negatives = subjects[subject_label == 1], subjects[subject_label == 0]
    n_pos, n_neg, p = len(positives), len(negatives), float(prevalence)
    if n_pos * (1 - p) > p * n_neg:  # too many positives: keep every negative
        keep_pos, keep_neg = round(p * n_neg / (1 - p)), n_neg
    else:
        keep_pos, keep_neg = n_pos, round(n_pos * (1 - p) / p)
    if keep_pos < 1 or keep_neg < 1:
        raise InputError(where, f"prevalence {p} of {n_pos} positive and {n_neg} negative subjects keeps "
                                f"{keep_pos} positive and {keep_neg} negative; expected at least one of each "
                                f"(one positive at {p} needs about {subjects_for_positives(1, p)} subjects)")
    rng = np.random.default_rng(seed)
    kept = set(rng.permutation(positives)[:keep_pos]) | set(rng.permutation(negatives)[:keep_neg])
    return np.flatnonzero([s in kept for s in ids])
