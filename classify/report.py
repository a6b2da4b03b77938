"""Markdown report pieces: cohort composition, realism, the debiasing experiment, how to reproduce.

Each *_section returns a section body; render_report({heading: body}) puts them under "## heading" lines.
Plain Markdown tables, numbers with 3 decimals, "n/a" for anything missing or NaN. Experiment sections take an
ExperimentResult or the dict of its experiment.json, so a report can be rebuilt from saved results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from classify.experiment import ARM_LABELS, BASELINES, DEBIASED, is_missing
from classify.fairness import SENSITIVE_COLUMNS
from data.attributes import age_group, bmi_group, is_positive
from data.errors import InputError
from data.planner import KEY_VALUES, cell_keys
from data.rare import describe
from data.atomic import atomic_write_bytes

NA = "n/a"
ATTRIBUTE_NAMES = {"sex": "sex", "age_group": "age group", "bmi_group": "BMI group", "age_decade": "age decade",
                   "bmi_category": "BMI category", "health": "health group"}
GAP_NAMES = {"balanced_accuracy_gap": "gap (max − min)", "balanced_accuracy_ratio": "ratio (min / max)",
             "equalized_odds_difference": "equalized-odds diff.",
             "demographic_parity_difference": "demographic-parity diff."}


def as_dict(result) -> dict:
    """ExperimentResult or its to_dict() / experiment.json form -> the plain dict."""
    return result.to_dict() if hasattr(result, "to_dict") else result


def fmt(value, signed: bool = False) -> str:
    """Number -> 3 decimals ("+0.012" when signed); None/NaN -> "n/a"; text as is."""
    if is_missing(value):
        return NA
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):+.3f}" if signed else f"{float(value):.3f}"
    return str(value)


def fmt_mean_std(stat: Optional[dict]) -> str:
    """{"mean", "std"} -> "0.812 ± 0.013" (just the mean when std is undefined, e.g. one seed)."""
    if not stat or is_missing(stat.get("mean")):
        return NA
    return fmt(stat["mean"]) + ("" if is_missing(stat.get("std")) else f" ± {fmt(stat['std'])}")


def fmt_interval(interval: Optional[dict], signed: bool = False) -> str:
    """{"point", "lo", "hi"} -> "0.700 [0.650, 0.750]"."""
    if not interval or is_missing(interval.get("point")):
        return NA
    return f"{fmt(interval['point'], signed)} [{fmt(interval.get('lo'), signed)}, {fmt(interval.get('hi'), signed)}]"


def markdown_table(headers: list, rows: list) -> str:
    """Pipe table; '|' inside cells (e.g. 'female | <55') is escaped."""
    def cell(value) -> str:
        return (value if isinstance(value, str) else fmt(value)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _group_column(table: pd.DataFrame, name: str, raw: str, binning, fallback: str) -> Optional[tuple[str, list]]:
    """(attribute, group names) from a group column, else binned raw values, else a coarser fallback column."""
    if name in table.columns:
        return name, [None if is_missing(v) else str(v) for v in table[name]]
    if raw in table.columns:
        return name, [None if is_missing(v) or pd.isna(v) else binning(float(v)) for v in table[raw]]
    if fallback in table.columns:
        return fallback, [None if is_missing(v) else str(v) for v in table[fallback]]
    return None


def composition_counts(table: pd.DataFrame, positive: tuple = ("heart_failure",),
                       weight: Optional[str] = None, columns: tuple = SENSITIVE_COLUMNS) -> pd.DataFrame:
    """Rows attribute, group, n, n_positive per group of `columns` (default sex / age group / BMI group; health
    too if named), "unknown" where missing.

    table: one row per sample (sex, age, bmi, health; e.g. SliceSet.attributes) or an aggregated table whose rows
    count `weight` samples (default: its "count" column if any, like data.subgroups.subgroup_table's). Age and BMI
    come from age_group/bmi_group, else raw age/bmi, else age_decade/bmi_category.
    """
    if "health" not in table.columns:
        raise InputError("composition table", f"missing column 'health' (columns: {list(table.columns)})")
    weight = weight or ("count" if "count" in table.columns else None)
    if weight is not None and weight not in table.columns:
        raise InputError("composition table", f"missing weight column {weight!r}")
    w = np.ones(len(table)) if weight is None else table[weight].to_numpy(dtype=float)
    pos = np.array([is_positive(None if is_missing(h) else h, tuple(positive)) for h in table["health"]], dtype=bool)
    found = {name: (name, [None if is_missing(v) else str(v) for v in table[name]])
             for name in ("sex", "health") if name in table.columns}
    found["age_group"] = _group_column(table, "age_group", "age", age_group, "age_decade")
    found["bmi_group"] = _group_column(table, "bmi_group", "bmi", bmi_group, "bmi_category")
    rows = []
    for attribute, values in [found[c] for c in columns if found.get(c)]:
        values = np.array(["unknown" if v is None else v for v in values], dtype=object)
        order = [g for g in KEY_VALUES.get(attribute, ()) if g in set(values)]
        order += sorted(g for g in set(values) if g not in order and g != "unknown")
        order += ["unknown"] if "unknown" in set(values) else []
        for group in order:
            rows.append({"attribute": attribute, "group": group, "n": int(round(w[values == group].sum())),
                         "n_positive": int(round(w[(values == group) & pos].sum()))})
    return pd.DataFrame(rows, columns=["attribute", "group", "n", "n_positive"])


def merged_counts(before: pd.DataFrame, after: pd.DataFrame, positive: tuple = ("heart_failure",),
                  columns: tuple = SENSITIVE_COLUMNS) -> pd.DataFrame:
    """composition_counts of both, side by side (n_before, n_positive_before, n_after, n_positive_after), in
    before's row order, then groups only present after."""
    before = composition_counts(before, positive, columns=columns)
    after = composition_counts(after, positive, columns=columns)
    keys = pd.concat([before, after])[["attribute", "group"]].drop_duplicates()
    merged = keys.merge(before, how="left", on=["attribute", "group"]).merge(
        after, how="left", on=["attribute", "group"], suffixes=("_before", "_after"))
    counts = ["n_before", "n_positive_before", "n_after", "n_positive_after"]
    merged[counts] = merged[counts].fillna(0).astype(int)
    return merged.reset_index(drop=True)


def composition_section(before_table: pd.DataFrame, after_table: pd.DataFrame,
                        positive: tuple = ("heart_failure",), columns: tuple = SENSITIVE_COLUMNS) -> str:
    """Positives per subgroup in the real training set (before) and with the synthetic samples added (after)."""
    merged = merged_counts(before_table, after_table, positive, columns)
    rows = [[ATTRIBUTE_NAMES.get(r.attribute, r.attribute), r.group, int(r.n_before), int(r.n_positive_before),
             fmt(r.n_positive_before / r.n_before if r.n_before else None), int(r.n_after), int(r.n_positive_after),
             fmt(r.n_positive_after / r.n_after if r.n_after else None)] for r in merged.itertuples()]
    label = " / ".join(positive)
    total = [int(len(before_table) if "count" not in before_table else before_table["count"].sum()),
             int(len(after_table) if "count" not in after_table else after_table["count"].sum())]
    intro = (f"Positive class: {label}. Samples before rebalancing: {total[0]}; after: {total[1]} "
             f"(+{total[1] - total[0]} synthetic).")
    headers = ["attribute", "group", "n before", "positives before", "positive share before", "n after",
               "positives after", "positive share after"]
    return intro + "\n\n" + markdown_table(headers, rows)


def _columns(data: dict) -> tuple:
    """The groups an experiment was scored over (experiment.json of older runs: sex, age group, BMI group)."""
    return tuple(data["config"]["experiment"].get("groups", SENSITIVE_COLUMNS))


def _is_rare(rare: Optional[dict], attribute: str, group: str) -> bool:
    return rare is not None and (rare["key"], rare["value"]) == (attribute, group)


def _group_name(rare: Optional[dict], attribute: str, group: str) -> str:
    return f"{group} (rare)" if _is_rare(rare, attribute, group) else group


def _headline(data: dict, rare: Optional[dict] = None) -> str:
    """Plain-words verdict of arm (c) against (a) and (b); with a rare group (data.rare), its change too."""
    if DEBIASED not in data["arms"]:
        reason = data.get("skipped", {}).get(DEBIASED, "not requested")
        return (f"Arm {ARM_LABELS[DEBIASED]} was not run ({reason}), so this report cannot say whether synthetic "
                "data helps.")
    lines = []
    for key, comp in data["comparison"].items():
        gain, verdict = comp["worst_group_gain"], comp["verdict"]
        base = ARM_LABELS[comp["baseline"]]
        change = (f"worst-group balanced accuracy changed by {fmt(gain.get('point'), True)} "
                  f"(95% CI {fmt(gain.get('lo'), True)} to {fmt(gain.get('hi'), True)})")
        words = {"helped": "synthetic data helped: the",
                 "hurt": "synthetic data hurt: the",
                 "no clear difference": "synthetic data did NOT clearly help: the",
                 "undetermined": "the effect of synthetic data is undetermined: the"}[verdict]
        gaps = ", ".join(f"{ATTRIBUTE_NAMES[c]} {fmt(comp['disparity_change'][c]['balanced_accuracy_gap'], True)}"
                         for c in _columns(data))
        on_rare = [g for g in comp.get("group_gains", []) if _is_rare(rare, g["attribute"], g["group"])]
        rare_words = "".join(f"; the rare group's ({ATTRIBUTE_NAMES.get(g['attribute'], g['attribute'])} "
                             f"{g['group']}) balanced accuracy changed by {fmt(g.get('point'), True)} (95% CI "
                             f"{fmt(g.get('lo'), True)} to {fmt(g.get('hi'), True)}: {g['verdict']})" for g in on_rare)
        lines.append(f"- Against {base}: {words} {change}{rare_words}; balanced accuracy changed by "
                     f"{fmt(comp['balanced_accuracy_change'], True)}; the balanced-accuracy gap (max − min) "
                     f"changed by {gaps} (negative = smaller gap).")
    if not lines:
        lines.append(f"- No baseline arm ({', '.join(BASELINES)}) was run to compare {ARM_LABELS[DEBIASED]} against.")
    return "**Headline.** Arm " + ARM_LABELS[DEBIASED] + " against the baselines:\n\n" + "\n".join(lines)


def _rate_name(row: dict) -> str:
    """What a group's balanced accuracy measures: TPR / TNR where the group holds one class (e.g. health groups)."""
    if row["n_positive"] == row["count"]:
        return "TPR"
    return "TNR" if row["n_positive"] == 0 else "bal. acc."


def experiment_section(result, plot_path: Optional[str | Path] = None, rare: Optional[dict] = None) -> str:
    """Headline verdict, per-arm summary, comparison, disparities and per-subgroup balanced accuracy with CIs.

    rare: data.rare's summary (key, value, ...) when one group was made rare: its row is marked and its change
    under arm (c) is in the headline."""
    data = as_dict(result)
    arms, agg, test, cfg = data["arms"], data["aggregate"], data["test"], data["config"]
    seeds, n_boot, columns = cfg["experiment"]["seeds"], cfg["experiment"]["n_boot"], _columns(data)
    names = [ATTRIBUTE_NAMES.get(c, c) for c in columns]
    parts = [_headline(data, rare)]
    n_train = {arm: next((r["n_train"] for r in data["runs"] if r["arm"] == arm), None) for arm in arms}
    rows = [[ARM_LABELS[a], n_train[a], fmt_mean_std(agg[a]["balanced_accuracy"]), fmt_mean_std(agg[a]["auroc"]),
             fmt_mean_std(agg[a]["worst_group_balanced_accuracy"]),
             fmt_interval(data["intervals"][a]["worst_group_balanced_accuracy"]),
             *[fmt_mean_std(agg[a][c]["balanced_accuracy_gap"]) for c in columns]] for a in arms]
    headers = ["arm", "n train", "balanced accuracy", "AUROC", "worst-group bal. acc.", "worst-group 95% CI",
               *[f"gap {name}" for name in names]]
    parts += ["### Summary per arm (mean ± std over seeds)", markdown_table(headers, rows)]
    if data["comparison"]:
        rows = [[key, fmt_interval(c["worst_group_gain"], signed=True), c["verdict"],
                 fmt(c["balanced_accuracy_change"], True)] for key, c in data["comparison"].items()]
        parts += [f"### Arm {ARM_LABELS[DEBIASED]} against the baselines",
                  markdown_table(["comparison", "worst-group gain [95% CI, paired]", "verdict",
                                  "Δ balanced accuracy"], rows)]
        rows = [[key, ATTRIBUTE_NAMES[col], *[fmt(c["disparity_change"][col][k], True) for k in GAP_NAMES]]
                for key, c in data["comparison"].items() for col in columns]
        parts += ["Disparity change (arm (c) minus baseline; negative gap / differences and positive ratio = fairer):",
                  markdown_table(["comparison", "attribute", *[f"Δ {v}" for v in GAP_NAMES.values()]], rows)]
        gains = {(c["baseline"], g["attribute"], g["group"]): fmt_interval(g, signed=True)
                 for c in data["comparison"].values() for g in c.get("group_gains", [])}
        keys = list(dict.fromkeys(k[1:] for k in gains))
        bases = [c["baseline"] for c in data["comparison"].values()]
        rows = [[ATTRIBUTE_NAMES.get(k[0], k[0]), _group_name(rare, *k), *[gains.get((b, *k), NA) for b in bases]]
                for k in keys]
        if rows:
            parts += [f"Per-group change of {ARM_LABELS[DEBIASED]} (balanced accuracy, arm (c) minus baseline; "
                      "95% CI paired over test subjects):",
                      markdown_table(["attribute", "group", *[f"Δ vs {ARM_LABELS[b]}" for b in bases]], rows)]
    rows = [[ARM_LABELS[a], ATTRIBUTE_NAMES[c], fmt_mean_std(agg[a][c]["worst_group_balanced_accuracy"]),
             *[fmt_mean_std(agg[a][c][k]) for k in GAP_NAMES]] for a in arms for c in columns]
    parts += ["### Disparities per group attribute (mean ± std over seeds)",
              markdown_table(["arm", "attribute", "worst group bal. acc.", *GAP_NAMES.values()], rows)]
    tables = {a: data["intervals"][a]["subgroups"] for a in arms}
    keys = list(dict.fromkeys((r["attribute"], r["group"]) for a in arms for r in tables[a]))
    info = {(r["attribute"], r["group"]): r for a in arms for r in tables[a]}
    cells = {(a, r["attribute"], r["group"]): fmt_interval(r) for a in arms for r in tables[a]}
    rows = [[ATTRIBUTE_NAMES.get(k[0], k[0]), _group_name(rare, *k), info[k]["n_subjects"], info[k]["count"],
             info[k]["n_positive"], _rate_name(info[k]), *[cells.get((a, *k), NA) for a in arms]] for k in keys]
    headers = ["attribute", "group", "test subjects", "test slices", "positive slices", "measures",
               *[ARM_LABELS[a] for a in arms]]
    parts += ["### Per-subgroup balanced accuracy [95% CI]",
              markdown_table(headers, rows) if rows else f"No test subgroup with a known {' / '.join(names)}."]
    if any(_rate_name(info[k]) != "bal. acc." for k in keys):
        parts.append("A group holding one class (e.g. every health group, the label being a function of it) has "
                     "its accuracy as balanced accuracy: the TPR of a positive group, the TNR of a negative one; "
                     "equalized-odds and demographic-parity differences are n/a over such groups.")
    if plot_path is not None:
        parts.append(f"![Per-subgroup balanced accuracy per arm]({Path(plot_path).as_posix()})")
    if data.get("skipped"):
        skipped = "; ".join(f"{ARM_LABELS.get(a, a)}: {r}" for a, r in data["skipped"].items())
        parts.append(f"Skipped arms: {skipped}.")
    parts.append(f"Method: test set of {test['n_slices']} slices from {test['n_subjects']} held-out real subjects "
                 f"({test['n_positive']} positive slices); seeds {', '.join(map(str, seeds))}; threshold "
                 f"{cfg['threshold']}. Model selection (best epoch) on {100 * cfg['experiment']['val_fraction']:.0f}% "
                 f"of each arm's own training subjects. Groups: {', '.join(names)}; arm (b) draws each label x "
                 f"{' x '.join(names)} metagroup equally often. Intervals: {n_boot} bootstrap resamples of test "
                 "subjects; each replicate averages the metric over seeds, so the interval brackets the seed mean.")
    return "\n\n".join(parts)


def rare_section(rare: dict, plan: pd.DataFrame) -> str:
    """What data.rare did: the group, kept / dropped training subjects, and where the group's synthetic cases
    take their masks from. plan: the rebalancing plan (data.planner columns)."""
    n_synthetic = int((cell_keys(plan, (rare["key"],))[rare["key"]] == rare["value"]).sum())
    return (f"{describe(rare)}.\n\nThe held-out test subjects are untouched (the split is made first), so every "
            "arm is scored on the same patients as a run without `data.rare`; the VAE, LDM and ControlNet were "
            "trained without the dropped subjects. The plan adds "
            f"{n_synthetic} synthetic {rare['key']} = {rare['value']} cases, whose masks come from the group's "
            f"{len(rare['kept'])} remaining training subject(s) (reused masks are jittered): the dropped "
            "subjects stay unseen, as they would be in a cohort that truly lacked them.")


def reproduce_section(commands: list[str], config_yaml: str) -> str:
    """The commands that produced the report and the full config they ran with."""
    return ("Commands:\n\n```bash\n" + "\n".join(commands) + "\n```\n\nConfig:\n\n```yaml\n"
            + config_yaml.rstrip("\n") + "\n```")


def render_report(sections: dict, title: str = "cardiac-ldm: debiasing report") -> str:
    """{heading: body} -> "# title" then "## heading" + body per section, in order (empty body -> n/a)."""
    parts = [f"# {title}"]
    for heading, body in sections.items():
        parts += [f"## {heading}", (body or "").strip() or f"_{NA}_"]
    return "\n\n".join(parts) + "\n"


def write_report(path: str | Path, sections: dict, title: str = "cardiac-ldm: debiasing report") -> Path:
    """Render and write the report atomically; returns path."""
    path = Path(path)
    atomic_write_bytes(path, render_report(sections, title).encode("utf-8"))
    return path
