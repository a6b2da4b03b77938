"""Figures of the report: per-subgroup balanced accuracy per arm, and positives per subgroup before/after rebalancing.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, so no global figure state or display backend),
rendered to PNG bytes and written atomically.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from classify.experiment import ARM_LABELS
from classify.fairness import SENSITIVE_COLUMNS
from classify.report import ATTRIBUTE_NAMES, as_dict, merged_counts
from data.atomic import atomic_write_bytes


def _save_png(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _positions(keys: list[tuple[str, str]]) -> np.ndarray:
    """x of each (attribute, group), with one empty slot between attributes."""
    x, pos, previous = [], -1.0, None
    for attribute, _ in keys:
        pos += 1.0 if attribute == previous or previous is None else 2.0
        x.append(pos)
        previous = attribute
    return np.array(x)


def _label_axis(ax, keys: list[tuple[str, str]], x: np.ndarray) -> None:
    """Group names as ticks (slanted when long, e.g. health groups); each attribute's name once, under its block."""
    names = [group for _, group in keys]
    slanted = max(len(n) for n in names) > 8
    ax.set_xticks(x, names, rotation=25 if slanted else 0, ha="right" if slanted else "center")
    attributes = list(dict.fromkeys(a for a, _ in keys))
    if len(attributes) == 1:  # placed by matplotlib below the tick labels, however tall they are
        ax.set_xlabel(ATTRIBUTE_NAMES.get(attributes[0], attributes[0]), fontweight="bold")
        return
    for attribute in attributes:
        centre = float(np.mean([xi for xi, (a, _) in zip(x, keys) if a == attribute]))
        ax.text(centre, -0.12, ATTRIBUTE_NAMES.get(attribute, attribute), transform=ax.get_xaxis_transform(),
                ha="center", va="top", fontweight="bold")


def subgroup_bar_plot(result, path: str | Path) -> Path:
    """Grouped bars: balanced accuracy (mean over runs) per test subgroup (experiment.groups: sex, age group, BMI group
    or health) and arm, with 95% bootstrap CIs as error bars. result: ExperimentResult or its experiment.json dict."""
    data = as_dict(result)
    arms = data["arms"]
    tables = {a: pd.DataFrame(data["intervals"][a]["subgroups"]) for a in arms}
    keys = list(dict.fromkeys((r.attribute, r.group) for a in arms for r in tables[a].itertuples()))
    fig = Figure(figsize=(max(6.0, 0.9 * len(keys) + 2), 4.0))
    ax = fig.add_subplot()
    if not keys:
        ax.text(0.5, 0.5, "no test subgroup with a known group attribute", ha="center", va="center")
        ax.set_axis_off()
        return _save_png(fig, path)
    x, width = _positions(keys), 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        table = tables[arm].set_index(["attribute", "group"]).reindex(keys)
        point, lo, hi = (pd.to_numeric(table[c]).to_numpy(dtype=float) for c in ("point", "lo", "hi"))
        shown = np.isfinite(point)  # an absent group draws no bar rather than a misleading zero
        err = np.nan_to_num(np.clip(np.stack([point - lo, hi - point]), 0, None))[:, shown]
        ax.bar(x[shown] + (i - (len(arms) - 1) / 2) * width, point[shown], width, yerr=err, capsize=2,
               label=ARM_LABELS.get(arm, arm))
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)  # chance level
    _label_axis(ax, keys, x)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("balanced accuracy (mean over runs, 95% CI)")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("Per-subgroup balanced accuracy on the real test set")
    return _save_png(fig, path)


def composition_plot(before: pd.DataFrame, after: pd.DataFrame, path: str | Path,
                     positive: tuple = ("heart_failure",), columns: tuple = SENSITIVE_COLUMNS) -> Path:
    """Bars of positives per subgroup (of `columns`: sex, age group, BMI group) before and after rebalancing;
    samples per group when `columns` holds health (each health group is all positive or all negative).

    before / after: one row per sample (sex, age, bmi, health) or count tables, as report.composition_counts.
    """
    counts = merged_counts(before, after, positive, columns)
    keys = list(zip(counts["attribute"], counts["group"]))
    fig = Figure(figsize=(max(6.0, 0.8 * len(keys) + 2), 4.0))
    ax = fig.add_subplot()
    x = _positions(keys)
    # grouped by health, the label is a function of the group: how many samples each has is what changes
    what = "samples" if "health" in columns else "positives"
    prefix = "n" if what == "samples" else "n_positive"
    for offset, when in ((-0.2, "before"), (0.2, "after")):
        ax.bar(x + offset, counts[f"{prefix}_{when}"].to_numpy(dtype=float), 0.4, label=when)
    _label_axis(ax, keys, x)
    ax.set_ylabel("samples" if what == "samples" else f"positives ({' / '.join(positive)})")
    ax.legend(fontsize="small")
    ax.set_title(f"{what.capitalize()} per subgroup before and after rebalancing")
    return _save_png(fig, path)
