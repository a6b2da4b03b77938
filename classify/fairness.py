"""Subgroup performance and fairness metrics of a binary classifier (per sex, age group, BMI group and intersections).

Per-group numbers come from fairlearn's MetricFrame; the disparity summaries use fairlearn's equalized-odds and
demographic-parity differences. A missing attribute is the group "unknown": it is listed in the per-group table
but left out of worst-group and disparity numbers, since it is not a demographic group.
A cohort without sensitive attributes (ACDC) is grouped by what it has instead: `columns` may name "health". The
label is then constant within a group, so a group's balanced accuracy is its accuracy (the TPR of a positive
group, the TNR of a negative one), and equalized odds and demographic parity are n/a.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, count, demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import roc_auc_score

from data.attributes import age_group, bmi_group, normalise_sex
from data.errors import InputError

SENSITIVE_COLUMNS = ("sex", "age_group", "bmi_group")
GROUP_COLUMNS = SENSITIVE_COLUMNS + ("health",)  # what results may be grouped by
UNKNOWN = "unknown"


def _is_missing(value) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _number_or_none(value, where: str):
    if _is_missing(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(where, f"expected a number or empty, got {value!r}") from None


def check_columns(columns: tuple, where: str = "groups") -> tuple:
    """Distinct names from GROUP_COLUMNS, at least one."""
    columns = tuple(columns)
    if not columns or len(set(columns)) != len(columns) or not set(columns) <= set(GROUP_COLUMNS):
        raise InputError(where, f"expected distinct names from {', '.join(GROUP_COLUMNS)}, got {list(columns)}")
    return columns


def sensitive_frame(df: pd.DataFrame, columns: tuple = SENSITIVE_COLUMNS) -> pd.DataFrame:
    """The group columns (default sex, age_group, bmi_group) as strings, missing -> "unknown".

    Each group column is taken as given, or derived from raw 'age' / 'bmi' with data.attributes' bins; health is
    taken as given.
    """
    if not isinstance(df, pd.DataFrame):
        raise InputError("groups", f"expected a pandas DataFrame with columns {', '.join(columns)}; "
                                   f"got {type(df).__name__}")
    columns = check_columns(columns)
    out = pd.DataFrame(index=df.index)
    for name in ("sex", "health"):
        if name in columns and name not in df.columns:
            raise InputError("groups", f"missing column {name!r} (columns: {list(df.columns)})")
    if "sex" in columns:
        out["sex"] = [UNKNOWN if _is_missing(v) or v == UNKNOWN else normalise_sex(v, "groups: sex") for v in df["sex"]]
    for group_col, raw_col, binning in (("age_group", "age", age_group), ("bmi_group", "bmi", bmi_group)):
        if group_col not in columns:
            continue
        if group_col in df.columns:
            out[group_col] = [UNKNOWN if _is_missing(v) else str(v) for v in df[group_col]]
        elif raw_col in df.columns:
            out[group_col] = [binning(_number_or_none(v, f"groups: {raw_col}")) or UNKNOWN for v in df[raw_col]]
        else:
            raise InputError("groups", f"missing column '{group_col}' (or raw '{raw_col}'); has {list(df.columns)}")
    if "health" in columns:
        out["health"] = [UNKNOWN if _is_missing(v) else str(v) for v in df["health"]]
    return out[list(columns)]


def groupings(columns: tuple = SENSITIVE_COLUMNS) -> list[tuple[str, ...]]:
    """Each single column, each pair that includes the first (sex), and all columns together."""
    single = [(c,) for c in columns]
    pairs = [(columns[0], c) for c in columns[1:]]
    return single + pairs + ([tuple(columns)] if len(columns) > 2 else [])


# Per-group metrics: NaN, not 0, when a group lacks the class a rate is conditioned on.
def true_positive_rate(y_true, y_pred) -> float:
    pos = np.asarray(y_true) == 1
    return float(np.mean(np.asarray(y_pred)[pos] == 1)) if pos.any() else float("nan")


def false_positive_rate(y_true, y_pred) -> float:
    neg = np.asarray(y_true) == 0
    return float(np.mean(np.asarray(y_pred)[neg] == 1)) if neg.any() else float("nan")


def balanced_accuracy(y_true, y_pred):
    """Mean of sensitivity and specificity over the classes present (= sklearn's balanced_accuracy_score).

    y_pred: (N,) 0/1 -> a float; (N, k), e.g. one column per seed -> (k,) array, one value per column.
    """
    y_true, hit = np.asarray(y_true), np.asarray(y_pred) == 1
    pos, neg = y_true == 1, y_true == 0
    rates = ([hit[pos].mean(0)] if pos.any() else []) + ([1.0 - hit[neg].mean(0)] if neg.any() else [])
    out = np.mean(rates, axis=0) if rates else np.full(hit.shape[1:], np.nan)
    return float(out) if out.ndim == 0 else out


def accuracy(y_true, y_pred) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else float("nan")


def auroc(y_true, y_pred, y_score) -> float:
    """Area under the ROC curve of y_score; NaN when the group has a single class or scores are missing."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=float)
    if len(np.unique(y_true)) != 2 or np.isnan(y_score).any():
        return float("nan")
    return float(roc_auc_score(y_true, y_score))


def _checked(y_true, y_pred, y_score, groups, columns) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    n = len(y_true)
    y_score = np.full(n, np.nan) if y_score is None else np.asarray(y_score, dtype=float).ravel()
    for name, arr in (("y_pred", y_pred), ("y_score", y_score)):
        if len(arr) != n:
            raise InputError(name, f"expected {n} values (one per y_true), got {len(arr)}")
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.isin(arr, (0, 1)).all():
            raise InputError(name, f"expected binary labels 0/1, got values {np.unique(arr)[:5].tolist()}")
    y_true, y_pred = y_true.astype(int), y_pred.astype(int)
    if len(groups) != n:
        raise InputError("groups", f"expected {n} rows (one per y_true), got {len(groups)}")
    return y_true, y_pred, y_score, sensitive_frame(groups, columns).reset_index(drop=True)


def _metric_frame(y_true, y_pred, y_score, sensitive) -> MetricFrame:
    metrics = {"count": count, "accuracy": accuracy, "balanced_accuracy": balanced_accuracy,
               "tpr": true_positive_rate, "fpr": false_positive_rate, "auroc": auroc}
    return MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=sensitive,
                       sample_params={"auroc": {"y_score": y_score}})


def subgroup_metrics(y_true, y_pred, y_score, groups: pd.DataFrame, columns: tuple = SENSITIVE_COLUMNS) -> pd.DataFrame:
    """One row per (grouping, group): count, n_positive, accuracy, balanced_accuracy, tpr, fpr, auroc.

    y_true, y_pred: (N,) 0/1; y_score: (N,) P(positive) or None (AUROC NaN); groups: (N rows) with the `columns`
    (sex, age(_group), bmi(_group) by default; or health).
    grouping is e.g. "sex" or "sex x age_group"; group is e.g. "female" or "female | <55". First row is "overall".
    """
    y_true, y_pred, y_score, sensitive = _checked(y_true, y_pred, y_score, groups, columns)
    overall = _metric_frame(y_true, y_pred, y_score, sensitive[columns[0]]).overall.to_dict()
    rows = [{"grouping": "overall", "group": "all", **overall, "n_positive": int(y_true.sum())}]
    for cols in groupings(tuple(columns)):
        by_group = _metric_frame(y_true, y_pred, y_score, sensitive[list(cols)]).by_group
        by_group = by_group[by_group["count"].fillna(0) > 0]  # MetricFrame lists empty intersections as NaN
        for key, values in by_group.iterrows():
            key = key if isinstance(key, tuple) else (key,)
            mask = np.all([sensitive[c].to_numpy() == k for c, k in zip(cols, key)], axis=0)
            rows.append({"grouping": " x ".join(cols), "group": " | ".join(map(str, key)), **values.to_dict(),
                         "n_positive": int(y_true[mask].sum())})
    table = pd.DataFrame(rows)
    table["count"] = table["count"].astype(int)
    return table[["grouping", "group", "count", "n_positive", "accuracy", "balanced_accuracy", "tpr", "fpr", "auroc"]]


def _disparities(y_true, y_pred, table: pd.DataFrame, keys: pd.Series, min_count: int) -> dict:
    """Worst group and gaps of one grouping, over known groups with >= min_count samples."""
    known = table[~table["group"].str.contains(UNKNOWN) & (table["count"] >= min_count)]
    known = known[known["balanced_accuracy"].notna()]
    out = {"n_groups": int(len(known))}
    if len(known) == 0:
        return out | {"worst_group": None, "worst_group_balanced_accuracy": float("nan"),
                      "balanced_accuracy_gap": float("nan"), "balanced_accuracy_ratio": float("nan"),
                      "equalized_odds_difference": float("nan"), "demographic_parity_difference": float("nan")}
    worst = known.loc[known["balanced_accuracy"].idxmin()]
    best = float(known["balanced_accuracy"].max())
    in_known = keys.isin(known["group"]).to_numpy()
    # equalized odds needs both TPR and FPR, so only groups holding both classes enter it
    both = known[(known["n_positive"] > 0) & (known["n_positive"] < known["count"])]
    in_both = keys.isin(both["group"]).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eod = float("nan") if len(both) < 2 else equalized_odds_difference(
            y_true[in_both], y_pred[in_both], sensitive_features=keys[in_both].to_numpy())
        # where no group holds both classes the label is a function of the group (health groups): equal
        # selection rates would then mean wrong predictions, so demographic parity is n/a
        dpd = float("nan") if len(known) < 2 or len(both) == 0 else demographic_parity_difference(
            y_true[in_known], y_pred[in_known], sensitive_features=keys[in_known].to_numpy())
    return out | {
        "worst_group": str(worst["group"]),
        "worst_group_balanced_accuracy": float(worst["balanced_accuracy"]),
        "balanced_accuracy_gap": best - float(worst["balanced_accuracy"]),
        "balanced_accuracy_ratio": float(worst["balanced_accuracy"]) / best if best > 0 else float("nan"),
        "equalized_odds_difference": float(eod),
        "demographic_parity_difference": float(dpd),
    }


def fairness_summary(y_true, y_pred, y_score, groups: pd.DataFrame, min_count: int = 1,
                     columns: tuple = SENSITIVE_COLUMNS) -> dict:
    """{"overall": {metric: value}, "<grouping>": {worst_group, worst_group_balanced_accuracy, balanced_accuracy_gap
    (max - min), balanced_accuracy_ratio (min / max), equalized_odds_difference, demographic_parity_difference,
    n_groups}} for every grouping of subgroup_metrics, plus "worst_group_balanced_accuracy": the lowest over the
    single-attribute groups (e.g. sex, age_group, bmi_group; intersections are often too small to rank).

    Groups named "unknown", smaller than min_count, or without a defined balanced accuracy are left out.
    """
    columns = check_columns(columns)
    y_true, y_pred, y_score, sensitive = _checked(y_true, y_pred, y_score, groups, columns)
    table = subgroup_metrics(y_true, y_pred, y_score, sensitive, columns)
    overall = table.iloc[0]
    summary = {"overall": {k: (int(overall[k]) if k in ("count", "n_positive") else float(overall[k]))
                           for k in table.columns[2:]}}
    for cols in groupings(columns):
        name = " x ".join(cols)
        keys = sensitive[list(cols)].astype(str).agg(" | ".join, axis=1)
        summary[name] = _disparities(y_true, y_pred, table[table["grouping"] == name], keys, min_count)
    worst = [summary[c]["worst_group_balanced_accuracy"] for c in columns]
    summary["worst_group_balanced_accuracy"] = float(np.nanmin(worst)) if not np.all(np.isnan(worst)) else float("nan")
    return summary


def worst_group_balanced_accuracy(y_true, y_pred, y_score, groups: pd.DataFrame, column: str = "sex") -> float:
    """Lowest balanced accuracy over the known groups of one sensitive column, without MetricFrame: fast enough to
    pass to bootstrap_ci (e.g. functools.partial(worst_group_balanced_accuracy, column="age_group"))."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if column not in GROUP_COLUMNS:
        raise InputError("column", f"expected one of {GROUP_COLUMNS}, got {column!r}")
    keys = sensitive_frame(groups, (column,))[column].to_numpy()
    scores = [balanced_accuracy(y_true[keys == k], y_pred[keys == k]) for k in np.unique(keys) if k != UNKNOWN]
    scores = [s for s in scores if not np.isnan(s)]
    return float(min(scores)) if scores else float("nan")
