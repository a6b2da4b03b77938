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
    return (point, *percentile_interval(stats, alpha))


def mean_std_over_seeds(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of one metric over training seeds; std is NaN for one seed."""
    values = np.asarray(values, dtype=float).ravel()
    if len(values) == 0:
        raise InputError("mean_std_over_seeds", "expected at least one value")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return float(np.mean(values)), std


# Hierarchical bootstrap of an experiment with nested variance sources. Levels are resampled outermost first;
# "subjects" alone is the classic test-set bootstrap, each further level adds that source's spread.
LEVELS = ("subjects", "seeds", "generators")
LEVEL_SETS = {"subjects": ("subjects",), "subjects+seeds": ("subjects", "seeds"),
              "subjects+seeds+generators": LEVELS}
ColumnMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check_grid(preds: dict) -> tuple[int, int]:
    """-> (n_generators, n_seeds) shared by the arms; each arm has 1 or that many of each (a one-off arm, e.g.
    one without synthetic data or a deterministic rule, is constant along that level)."""
    if not preds:
        raise InputError("hierarchical_bootstrap: preds", "expected at least one arm")
    shapes = {arm: np.shape(p) for arm, p in preds.items()}
    n_rows = {s[0] for s in shapes.values()}
    if any(len(s) != 3 for s in shapes.values()) or len(n_rows) != 1:
        raise InputError("hierarchical_bootstrap: preds", f"expected (N_test, n_generators, n_seeds) arrays with one "
                                                          f"N_test, got {shapes}")
    n_gen, n_seeds = max(s[1] for s in shapes.values()), max(s[2] for s in shapes.values())
    bad = [a for a, s in shapes.items() if s[1] not in (1, n_gen) or s[2] not in (1, n_seeds)]
    if bad:
        raise InputError("hierarchical_bootstrap: preds", f"arm(s) {bad} have neither 1 nor {n_gen} generators / "
                                                          f"1 nor {n_seeds} seeds: {shapes}")
    return n_gen, n_seeds


def _run_weights(shape: tuple, gen_draw: Optional[np.ndarray], seed_counts: Optional[np.ndarray]) -> np.ndarray:
    """(G, S) weight of each run of an arm with `shape` = (G, S) runs: how often the replicate drew it.

    gen_draw: (n_generators,) generator drawn into each slot (None: every generator once, in its own slot);
    seed_counts: (n_generators, n_seeds) how often each seed was drawn within each slot (None: each seed once).
    An arm with one generator takes slot 0's seed draw; one with one seed counts one run per slot."""
    n_gen, n_seeds = shape
    slots = n_gen if gen_draw is None else len(gen_draw)
    counts = np.ones((slots, n_seeds)) if seed_counts is None or n_seeds == 1 else seed_counts
    if n_gen == 1 or gen_draw is None:
        return counts[:n_gen]
    weights = np.zeros((n_gen, n_seeds))
    np.add.at(weights, gen_draw, counts)
    return weights


def _combine(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(M, G, S) per-run metrics -> (M,) mean over runs weighted by (G, S) `weights`, NaN runs left out."""
    ok = ~np.isnan(values)
    total = (weights * ok).sum(axis=(1, 2))
    # offsets from one run's value: runs that all agree give that value exactly, whatever the grid (exact zero gains)
    flat = values.reshape(len(values), -1)
    ref = flat[np.arange(len(flat)), np.argmax(~np.isnan(flat), axis=1)]
    weighted = (np.where(ok, values - ref[:, None, None], 0.0) * weights).sum(axis=(1, 2))
    return np.where(total > 0, ref + weighted / np.where(total > 0, total, 1.0), np.nan)


def hierarchical_bootstrap(column_metric: ColumnMetric, preds: dict, subject_ids, n_boot: int = 1000,
                           seed: int = 0) -> tuple[dict, dict]:
    """Paired hierarchical bootstrap of every arm: test subjects, then generators, then classifier seeds within
    each drawn generator, each level with replacement.

    column_metric(row_weights (N,), y_pred (N, C)) -> (M, C): M metrics per prediction column, the rows counted
    with the given weights (a subject drawn k times counts k times; NaN where undefined).
    preds: arm -> (N, n_generators, n_seeds) 0/1 predictions on the same N test rows; an arm may have 1 generator
    (no synthetic data) or 1 seed (a deterministic rule).
    subject_ids: (N,) the cluster of each row (a subject's rows stay together); None = one row per subject.
    Each replicate draws subjects, generators and seeds ONCE and applies the same draw to every arm (paired: a
    gain is the difference of two arms' numbers in one replicate). Its value per arm is the mean of the per-run
    metric over the drawn runs on the drawn subjects.
    -> (point: arm -> (M,) mean over all runs on all rows,
        replicates: LEVEL_SETS name -> arm -> (n_boot, M)); the level sets share their draws, so their interval
        widths differ only by the levels added (subjects only; + seeds within each generator; + generators).
    """
    n_gen, n_seeds = _check_grid(preds)
    n = next(iter(preds.values())).shape[0]
    if n_boot < 1:
        raise InputError("hierarchical_bootstrap", f"expected n_boot >= 1, got {n_boot}")
    codes, uniques = pd.factorize(np.arange(n) if subject_ids is None else np.asarray(subject_ids))
    if len(codes) != n:
        raise InputError("hierarchical_bootstrap: subject_ids", f"expected {n} ids (one per row), got {len(codes)}")
    shape = {arm: np.shape(p)[1:] for arm, p in preds.items()}
    columns = np.hstack([np.asarray(p).reshape(n, -1) for p in preds.values()])  # every arm's runs: one metric call
    ends = np.cumsum([int(np.prod(s)) for s in shape.values()])[:-1]

    def per_run(weights):  # arm -> (M, G, S)
        values = np.asarray(column_metric(weights, columns), dtype=float)
        return {arm: v.reshape(-1, *shape[arm]) for arm, v in zip(preds, np.split(values, ends, axis=1))}

    point = {arm: _combine(v, _run_weights(shape[arm], None, None)) for arm, v in per_run(np.ones(n)).items()}
    # subjects are drawn exactly as bootstrap_ci draws them (same generator and seed): with no seed or generator
    # variance the two give the same interval
    rng_subjects = np.random.default_rng(seed)
    rng_gens, rng_seeds = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    reps = {name: {arm: np.empty((n_boot, len(point[arm]))) for arm in preds} for name in LEVEL_SETS}
    for b in range(n_boot):
        drawn = np.bincount(rng_subjects.integers(0, len(uniques), len(uniques)), minlength=len(uniques))
        gen_draw = rng_gens.integers(0, n_gen, n_gen)
        seed_counts = np.stack([np.bincount(rng_seeds.integers(0, n_seeds, n_seeds), minlength=n_seeds)
                                for _ in range(n_gen)]).astype(float)
        values = per_run(drawn[codes].astype(float))
        for name, levels in LEVEL_SETS.items():
            draws = (gen_draw if "generators" in levels else None, seed_counts if "seeds" in levels else None)
            for arm, v in values.items():
                reps[name][arm][b] = _combine(v, _run_weights(shape[arm], *draws))
    return point, reps


def percentile_interval(replicates: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """(lo, hi) percentile interval over axis 0, NaN replicates dropped; (nan, nan) when none is left."""
    replicates = np.asarray(replicates, dtype=float)
    replicates = replicates[~np.isnan(replicates)]
    if len(replicates) == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(replicates, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)
