"""Per-arm predictions -> compared results: the statistics of the debiasing experiment's arms (classify/experiment.py
trains and scores them).

Uncertainty: a paired hierarchical bootstrap (classify.bootstrap.hierarchical_bootstrap) resamples test SUBJECTS,
then generators, then classifier seeds within each drawn generator (arms using synthetic data run once per separately
trained generator x seed), each level with replacement, the same draw in every arm. An arm's number is the mean over
its runs; 95% percentile intervals; widths with subjects only / + seeds / + generators say which source dominates.
Primary endpoint (declared in the config before running, see classify/experiment.py): primary_metric of primary_arm
minus primary_baseline, with its (1 - alpha) CI, verdict and minimum detectable effect. Every other comparison
(primary_arm vs each other baseline, per-group gains vs every baseline) gets a bootstrap p-value, Holm-corrected over
that family.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from classify.bootstrap import LEVEL_SETS, hierarchical_bootstrap, mean_std_over_seeds, percentile_interval
from classify.fairness import UNKNOWN, balanced_accuracy
from classify.stats import bootstrap_p, holm, minimum_detectable_effect, verdict_from_interval, verdict_from_p
from data.planner import KEY_VALUES

THRESHOLD = 0.5  # P(positive) >= THRESHOLD predicts positive
DISPARITY_KEYS = ("worst_group_balanced_accuracy", "balanced_accuracy_gap", "balanced_accuracy_ratio",
                  "equalized_odds_difference", "demographic_parity_difference")
METRIC_ROWS = {"balanced_accuracy": 0, "worst_group_balanced_accuracy": 1}  # rows of _ba_metrics
FULL = list(LEVEL_SETS)[-1]  # every variance source


class Endpoint(Protocol):
    """The declared primary endpoint (experiment.ExperimentConfig is one): primary_metric (a METRIC_ROWS key) of
    primary_arm minus primary_baseline, at two-sided level alpha."""
    primary_metric: str
    primary_arm: str
    primary_baseline: str
    alpha: float


def _group_order(column: str, present) -> list:
    known = [g for g in KEY_VALUES.get(column, ()) if g in set(present)]
    return known + sorted(g for g in set(present) if g not in known and g != UNKNOWN)


def _group_keys(codes: np.ndarray, columns: tuple) -> list[tuple[str, str]]:
    """(attribute, group) of every test group, in report order (unknown groups are listed, not ranked)."""
    return [(column, group) for c, column in enumerate(columns) for group in _group_order(column, codes[:, c])] + \
        [(column, UNKNOWN) for c, column in enumerate(columns) if UNKNOWN in set(codes[:, c])]


def _ba_metrics(y_true: np.ndarray, masks: np.ndarray, known: np.ndarray):
    """column_metric for hierarchical_bootstrap: (row weights (N,), y_pred (N, C)) -> (2 + K, C): overall balanced
    accuracy, worst known group's, then each of the K groups' (masks: (K, N) bool; known: (K,) bool).
    A group holding one class gets that class's rate (TPR or TNR), as fairness.balanced_accuracy."""
    rows = np.vstack([np.ones((1, masks.shape[1]), bool), masks]).astype(float)
    y = y_true.astype(float)

    def metric(weights: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        pos, neg = rows * (weights * y), rows * (weights * (1 - y))
        n_pos, n_neg = pos.sum(1, keepdims=True), neg.sum(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr, tnr = (pos @ y_pred) / n_pos, 1.0 - (neg @ y_pred) / n_neg
        ba = np.where((n_pos > 0) & (n_neg > 0), (tpr + tnr) / 2, np.where(n_pos > 0, tpr, tnr))
        ba[((n_pos == 0) & (n_neg == 0)).ravel()] = np.nan
        rated = ba[1:][known]
        worst = np.full(y_pred.shape[1], np.nan) if np.isnan(rated).all() else np.nanmin(rated, axis=0)
        return np.vstack([ba[:1], worst[None], ba[1:]])
    return metric


def _error_counts(y_true: np.ndarray, preds: np.ndarray, rows: np.ndarray) -> dict:
    """Mean over runs of TP / FN / TN / FP (slices) among `rows`; preds: (N, n_runs)."""
    y, hit = y_true[rows, None] == 1, preds[rows] == 1
    return {"tp": float((y & hit).sum(0).mean()), "fn": float((y & ~hit).sum(0).mean()),
            "tn": float((~y & ~hit).sum(0).mean()), "fp": float((~y & hit).sum(0).mean())}


def _interval(point: float, replicates: np.ndarray, alpha: float = 0.05) -> dict:
    lo, hi = percentile_interval(replicates, alpha)
    return {"point": float(point), "lo": lo, "hi": hi}


def _mean_std(values: list) -> dict:
    mean, std = mean_std_over_seeds(values)
    return {"mean": mean, "std": std, "values": [float(v) for v in values]}


def aggregate_runs(summaries: list[dict], columns: tuple) -> dict:
    """Mean/std over runs (generators x seeds) of the overall and worst-group numbers and each attribute's
    disparities."""
    out = {k: _mean_std([s["overall"][k] for s in summaries]) for k in ("balanced_accuracy", "auroc")}
    out["worst_group_balanced_accuracy"] = _mean_std([s["worst_group_balanced_accuracy"] for s in summaries])
    for column in columns:
        out[column] = {k: _mean_std([s[column][k] for s in summaries]) for k in DISPARITY_KEYS}
    return out


def predictions_of(runs: list[dict], n_test: int) -> dict:
    """arm -> (N_test, n_generators, n_seeds) 0/1 decisions at THRESHOLD, from a result's runs (generator-major,
    as run_experiment appends them)."""
    preds = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        n_generators = len({r.get("generator") for r in mine})
        decisions = np.stack([np.asarray(r["scores"]) >= THRESHOLD for r in mine], axis=1).astype(int)
        preds[arm] = decisions.reshape(n_test, n_generators, len(mine) // n_generators)
    return preds


@dataclass
class Bootstrapped:
    """One hierarchical bootstrap of every arm: metric rows 0 overall BA, 1 worst-group BA, 2.. groups (keys)."""
    keys: list
    point: dict  # arm -> (2 + K,)
    reps: dict  # LEVEL_SETS name -> arm -> (n_boot, 2 + K)

    def gain(self, arm: str, base: str, row: int, levels: str = FULL) -> tuple[float, np.ndarray]:
        """Paired: (point gain, (n_boot,) replicate gains) of one metric row, arm minus base."""
        return (self.point[arm][row] - self.point[base][row],
                self.reps[levels][arm][:, row] - self.reps[levels][base][:, row])


def bootstrap_arms(y_true, preds: dict, codes: np.ndarray, subject_ids, n_boot: int, columns: tuple) -> Bootstrapped:
    """The paired hierarchical bootstrap of every arm; preds: arm -> (N, n_generators, n_seeds) 0/1 decisions."""
    keys = _group_keys(codes, columns)
    masks = np.array([codes[:, columns.index(a)] == g for a, g in keys]).reshape(len(keys), len(y_true))
    known = np.array([g != UNKNOWN for _, g in keys], dtype=bool)
    point, reps = hierarchical_bootstrap(_ba_metrics(y_true, masks, known), preds, subject_ids, n_boot, seed=0)
    return Bootstrapped(keys, point, reps)


def arm_intervals(y_true, preds: dict, codes: np.ndarray, subject_ids, boot: Bootstrapped, columns: tuple) -> dict:
    """Per arm: overall and worst-group intervals (all levels), interval widths per level set, error counts, and a
    subgroup table (point, 95% CI, error counts, subjects); preds: arm -> (N, n_generators, n_seeds)."""
    subject_ids = np.asarray(subject_ids)
    out = {}
    for arm, pred in preds.items():
        flat, reps = pred.reshape(len(y_true), -1), boot.reps[FULL][arm]
        rows = []
        for k, (column, group) in enumerate(boot.keys):
            in_group = codes[:, columns.index(column)] == group
            rows.append({"attribute": column, "group": group, "count": int(in_group.sum()),
                         "n_subjects": len(set(subject_ids[in_group])), "n_positive": int(y_true[in_group].sum()),
                         **_interval(boot.point[arm][2 + k], reps[:, 2 + k]),
                         "seed_std": mean_std_over_seeds(balanced_accuracy(y_true[in_group], flat[in_group]))[1],
                         **_error_counts(y_true, flat, in_group)})
        names = ["attribute", "group", "count", "n_subjects", "n_positive", "point", "lo", "hi", "seed_std",
                 "tp", "fn", "tn", "fp"]
        out[arm] = {"balanced_accuracy": _interval(boot.point[arm][0], reps[:, 0]),
                    "worst_group_balanced_accuracy": _interval(boot.point[arm][1], reps[:, 1]),
                    "width_by_levels": {name: float(np.subtract(*percentile_interval(r[arm][:, 1])[::-1]))
                                        for name, r in boot.reps.items()},
                    "counts": _error_counts(y_true, flat, np.ones(len(y_true), bool)),
                    "n_generators": int(pred.shape[1]), "n_seeds": int(pred.shape[2]),
                    "subgroups": pd.DataFrame(rows, columns=names)}
    return out


def gain_entry(boot: Bootstrapped, arm: str, base: str, row: int, alpha: float) -> dict:
    """arm minus base on one metric row: point, (1 - alpha) interval and bootstrap p-value."""
    point, reps = boot.gain(arm, base, row)
    return {**_interval(point, reps, alpha), "p": bootstrap_p(reps)}


def primary_endpoint(boot: Bootstrapped, cfg: Endpoint, skipped: dict) -> dict:
    """The declared endpoint: gain, (1 - alpha) CI, SE, minimum detectable effect, verdict, widths per level set."""
    arm, base, metric = cfg.primary_arm, cfg.primary_baseline, cfg.primary_metric
    out = {"metric": metric, "arm": arm, "baseline": base, "alpha": float(cfg.alpha)}
    missing = [a for a in (arm, base) if a not in boot.point]
    if missing:
        reasons = "; ".join(f"{a}: {skipped.get(a, 'not in experiment.arms')}" for a in missing)
        return out | {"point": float("nan"), "lo": float("nan"), "hi": float("nan"), "verdict": "undetermined",
                      "not_run": reasons}
    row = METRIC_ROWS[metric]
    entry = gain_entry(boot, arm, base, row, cfg.alpha)
    reps = boot.gain(arm, base, row)[1]
    se = float(np.nanstd(reps, ddof=1)) if np.sum(~np.isnan(reps)) > 1 else float("nan")
    widths = {name: float(np.subtract(*percentile_interval(boot.gain(arm, base, row, name)[1], cfg.alpha)[::-1]))
              for name in boot.reps}
    return out | entry | {"se": se, "mde": minimum_detectable_effect(se), "width_by_levels": widths,
                          "verdict": verdict_from_interval(entry["lo"], entry["hi"])}


def compare_with_baselines(aggregate: dict, boot: Bootstrapped, cfg: Endpoint, columns: tuple,
                           baselines: Collection[str]) -> tuple[dict, list]:
    """The primary arm against each of `baselines` that ran: worst-group gain and per-group gains (paired, with
    bootstrap p-values), BA and disparity changes. -> (comparison per "<arm> vs <baseline>", secondary family) where
    the family (all but the primary endpoint) carries Holm-corrected p-values and verdicts."""
    arm, out, family = cfg.primary_arm, {}, []  # family: (comparison, baseline, metric, entry to annotate)
    if arm not in boot.point:
        return out, []
    for base in [b for b in boot.point if b in baselines and b != arm]:
        key, row = f"{arm} vs {base}", METRIC_ROWS[cfg.primary_metric]
        gain = {"attribute": None, "group": None, **gain_entry(boot, arm, base, row, cfg.alpha)}
        if base != cfg.primary_baseline:
            family.append((key, base, cfg.primary_metric, gain))
        group_gains = [{"attribute": column, "group": group, **gain_entry(boot, arm, base, 2 + k, cfg.alpha)}
                       for k, (column, group) in enumerate(boot.keys) if group != UNKNOWN]
        family += [(key, base, "balanced_accuracy", g) for g in group_gains]
        a, b = aggregate[arm], aggregate[base]
        out[key] = {"baseline": base, "primary": base == cfg.primary_baseline, "metric": cfg.primary_metric,
                    "gain": gain, "group_gains": group_gains,
                    "balanced_accuracy_change": a["balanced_accuracy"]["mean"] - b["balanced_accuracy"]["mean"],
                    "disparity_change": {c: {k: a[c][k]["mean"] - b[c][k]["mean"] for k in DISPARITY_KEYS[1:]}
                                         for c in columns}}
    for (_, _, _, entry), p_holm in zip(family, holm([entry["p"] for *_, entry in family])):
        entry.update(p_holm=float(p_holm), verdict=verdict_from_p(entry["point"], p_holm, cfg.alpha))
    return out, [{"comparison": key, "baseline": base, "metric": metric, **entry} for key, base, metric, entry in family]
