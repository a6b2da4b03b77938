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
from classify.report import ATTRIBUTE_NAMES, as_dict, merged_counts
from ddpm.checkpoint import atomic_write_bytes


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
    """Group names as ticks; each attribute's name once, centred under its block."""
    ax.set_xticks(x, [group for _, group in keys])
    for attribute in dict.fromkeys(a for a, _ in keys):
        centre = float(np.mean([xi for xi, (a, _) in zip(x, keys) if a == attribute]))
        ax.text(centre, -0.12, ATTRIBUTE_NAMES.get(attribute, attribute), transform=ax.get_xaxis_transform(),
                ha="center", va="top", fontweight="bold")


def subgroup_bar_plot(result, path: str | Path) -> Path:
    """Grouped bars: balanced accuracy (seed mean) per test subgroup (sex, age group, BMI group) and arm, with 95%
    bootstrap CIs as error bars. result: ExperimentResult or its experiment.json dict."""
    data = as_dict(result)
    arms = data["arms"]
    tables = {a: pd.DataFrame(data["intervals"][a]["subgroups"]) for a in arms}
    keys = list(dict.fromkeys((r.attribute, r.group) for a in arms for r in tables[a].itertuples()))
    fig = Figure(figsize=(max(6.0, 0.9 * len(keys) + 2), 4.0))
    ax = fig.add_subplot()
    if not keys:
        ax.text(0.5, 0.5, "no test subgroup with known sex / age / BMI", ha="center", va="center")
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
    ax.set_ylabel("balanced accuracy (seed mean, 95% CI)")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("Per-subgroup balanced accuracy on the real test set")
    return _save_png(fig, path)


def composition_plot(before: pd.DataFrame, after: pd.DataFrame, path: str | Path,
                     positive: tuple = ("heart_failure",)) -> Path:
    """Bars of positives per subgroup (sex, age group, BMI group) before and after rebalancing.

    before / after: one row per sample (sex, age, bmi, health) or count tables, as report.composition_counts.
    """
    counts = merged_counts(before, after, positive)
    keys = list(zip(counts["attribute"], counts["group"]))
    fig = Figure(figsize=(max(6.0, 0.8 * len(keys) + 2), 4.0))
    ax = fig.add_subplot()
    x = _positions(keys)
    for offset, column, label in ((-0.2, "n_positive_before", "before"), (0.2, "n_positive_after", "after")):
        ax.bar(x + offset, counts[column].to_numpy(dtype=float), 0.4, label=label)
    _label_axis(ax, keys, x)
    ax.set_ylabel(f"positives ({' / '.join(positive)})")
    ax.legend(fontsize="small")
    ax.set_title("Positives per subgroup before and after rebalancing")
    return _save_png(fig, path)
