"""Cohort composition: subgroups = sex x age decade x BMI category x health, with counts and imbalance.

Missing attributes are kept as the value "unknown" so the table always accounts for every subject.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from data.atomic import atomic_write_bytes
from data.attributes import BMI_CATEGORIES, HEALTH_CONDITIONS, SEXES, age_decade, bmi_category, make_attributes
from data.errors import InputError

UNKNOWN = "unknown"
KEYS = ("sex", "age_decade", "bmi_category", "health")
INPUT_COLUMNS = ("sex", "age", "bmi", "health")
# Marginals reported by imbalance_summary: one per key, and health crossed with each other key.
CROSSES = (("health", "sex"), ("health", "bmi_category"), ("health", "age_decade"))


def _none_if_missing(value):
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def _rank(key: str, value: str) -> tuple:
    """Sort position of a key's value: vocabulary order, decades numerically, 'unknown' last."""
    if value == UNKNOWN:
        return (1, 0)
    if key == "age_decade":
        return (0, int(value[:-1]))
    vocab = {"sex": SEXES, "bmi_category": BMI_CATEGORIES, "health": HEALTH_CONDITIONS}[key]
    return (0, vocab.index(value))


def _sorted(frame: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    order = sorted(range(len(frame)), key=lambda i: tuple(_rank(k, frame[k].iloc[i]) for k in keys))
    return frame.iloc[order].reset_index(drop=True)


def subgroup_table(df: pd.DataFrame) -> pd.DataFrame:
    """df with columns sex, age, bmi, health (None/NaN allowed) -> one row per non-empty subgroup.

    Output columns: sex, age_decade ("40s"), bmi_category, health, count, share (count / n subjects).
    """
    missing = [c for c in INPUT_COLUMNS if c not in df.columns]
    if missing:
        raise InputError("metadata table", f"missing column(s) {', '.join(missing)}; expected {', '.join(INPUT_COLUMNS)}")
    rows = []
    for i, (sex, age, bmi, health) in enumerate(df[list(INPUT_COLUMNS)].itertuples(index=False, name=None)):
        attrs = make_attributes(*(_none_if_missing(v) for v in (sex, age, bmi, health)), where=f"metadata row {i}")
        decade = age_decade(attrs.age)
        rows.append((attrs.sex or UNKNOWN, UNKNOWN if decade is None else f"{decade}s",
                     bmi_category(attrs.bmi) or UNKNOWN, attrs.health or UNKNOWN))
    keys = pd.DataFrame(rows, columns=list(KEYS), dtype=object)
    table = keys.groupby(list(KEYS), sort=False).size().reset_index(name="count")
    table = _sorted(table, KEYS)
    table["count"] = table["count"].astype(int)
    table["share"] = table["count"] / max(len(df), 1)
    return table


def _counts(table: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    return _sorted(table.groupby(list(keys), sort=False)["count"].sum().reset_index(), keys)


def imbalance_summary(table: pd.DataFrame) -> dict:
    """Subgroup table -> n subjects, n non-empty cells, max/min cell count and ratio, marginal counts.

    marginals: {"sex": {value: n}, ..., "health x sex": {health: {sex: n}}, ...}; plain ints (JSON-ready).
    """
    cells = table[table["count"] > 0]
    counts = [int(c) for c in cells["count"]]
    marginals: dict = {}
    for key in KEYS:
        marginals[key] = {row[key]: int(row["count"]) for _, row in _counts(cells, (key,)).iterrows()}
    for outer, inner in CROSSES:
        nested: dict = {}
        for _, row in _counts(cells, (outer, inner)).iterrows():
            nested.setdefault(row[outer], {})[row[inner]] = int(row["count"])
        marginals[f"{outer} x {inner}"] = nested
    return {
        "n_subjects": sum(counts),
        "n_cells": len(counts),
        "max_count": max(counts, default=0),
        "min_count": min(counts, default=0),
        "max_min_ratio": max(counts) / min(counts) if counts else None,
        "marginals": marginals,
    }


def format_composition(table: pd.DataFrame) -> str:
    """Readable report: a one-line imbalance summary, the subgroup table, then health x sex counts."""
    summary = imbalance_summary(table)
    ratio = summary["max_min_ratio"]
    header = (f"{summary['n_subjects']} subjects in {summary['n_cells']} subgroups (sex x age decade x BMI x health); "
              f"largest/smallest subgroup = {summary['max_count']}/{summary['min_count']}"
              + ("" if ratio is None else f" = {ratio:.1f}x"))
    if table.empty:
        return header
    shown = table.assign(share=[f"{100 * s:.1f}%" for s in table["share"]])
    cross = pd.DataFrame(summary["marginals"]["health x sex"]).T.fillna(0).astype(int)
    return "\n".join([header, "", shown.to_string(index=False), "", "health x sex:", cross.to_string()])


def save_composition(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the subgroup table as CSV, atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    atomic_write_bytes(path, table.to_csv(index=False).encode())
    return path
