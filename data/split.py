"""Subject-level train/test split: every row (slice) of a subject lands on the same side."""
from __future__ import annotations

import numpy as np
import pandas as pd

from data.errors import InputError


def subject_split(subject_ids, labels_or_strata, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train_idx, test_idx) with about `fraction` of SUBJECTS in test, stratified per subject.

    Every row of a subject lands on the same side. Per-stratum test counts are the largest-remainder rounding of
    fraction * stratum size, so the test size is round(fraction * n_subjects) even with many tiny strata.
    """
    ids, strata = np.asarray(subject_ids), np.asarray(labels_or_strata).astype(str)
    if len(ids) != len(strata):
        raise InputError("subject_split", f"{len(ids)} subject ids but {len(strata)} labels/strata")
    if not 0.0 < float(fraction) < 1.0:
        raise InputError("subject_split: fraction", f"expected a number in (0, 1), got {fraction}")
    codes, uniques = pd.factorize(ids)
    n_subjects = len(uniques)
    if n_subjects < 2:
        raise InputError("subject_split", f"need at least 2 subjects to split, got {n_subjects}")
    first_row = np.unique(codes, return_index=True)[1]
    subject_stratum = strata[first_row]
    mixed = np.flatnonzero(strata != subject_stratum[codes])
    if len(mixed):
        raise InputError("subject_split", f"subject {ids[mixed[0]]!r} has rows in different strata; expected one per subject")
    names, stratum_of_subject = np.unique(subject_stratum, return_inverse=True)
    sizes = np.bincount(stratum_of_subject, minlength=len(names))
    rng = np.random.default_rng(seed)
    n_test = min(max(round(fraction * n_subjects), 1), n_subjects - 1)
    quota = fraction * sizes
    per_stratum = np.floor(quota).astype(int)
    # hand the leftover test slots to the strata with the largest fractional parts (random tie-break)
    order = np.lexsort((rng.random(len(names)), -(quota - per_stratum)))
    for s in order[: n_test - per_stratum.sum()]:
        per_stratum[s] = min(per_stratum[s] + 1, sizes[s])
    in_test = np.zeros(n_subjects, dtype=bool)
    for s in range(len(names)):
        members = np.flatnonzero(stratum_of_subject == s)
        in_test[rng.permutation(members)[: per_stratum[s]]] = True
    row_in_test = in_test[codes]
    return np.flatnonzero(~row_in_test), np.flatnonzero(row_in_test)


def stratified_folds(subject_ids, strata, k: int, seed: int) -> np.ndarray:
    """(N,) fold index in 0..k-1 of each row: a patient-level stratified k-fold partition (all of a subject's rows in
    one fold). Subjects are sorted by stratum, shuffled within it (seeded) and dealt round-robin from a seeded
    offset, so every stratum's count per fold differs by at most 1 across folds, and so does each fold's size.
    Independent of row order: the same subjects and seed give the same folds."""
    ids, strata = np.asarray(subject_ids).astype(str), np.asarray(strata).astype(str)
    if len(ids) != len(strata):
        raise InputError("stratified_folds", f"{len(ids)} subject ids but {len(strata)} strata")
    subjects, first = np.unique(ids, return_index=True)
    if not 2 <= int(k) <= len(subjects):
        raise InputError("stratified_folds: k", f"expected 2 <= k <= {len(subjects)} subjects, got {k}")
    of_subject = dict(zip(subjects, strata[first]))
    mixed = [s for s, st in zip(ids, strata) if of_subject[s] != st]
    if mixed:
        raise InputError("stratified_folds", f"subject {mixed[0]!r} has rows in different strata; expected one per subject")
    rng = np.random.default_rng(seed)
    order = [s for name in sorted(set(of_subject.values()))
             for s in rng.permutation(sorted(s for s in subjects if of_subject[s] == name))]
    start = int(rng.integers(k))
    fold_of = {s: (start + i) % int(k) for i, s in enumerate(order)}
    return np.array([fold_of[s] for s in ids], dtype=np.int64)
