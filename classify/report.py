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

from classify.experiment import ARM_LABELS, DEBIASED, NEEDS_SYNTHETIC, is_missing
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


METRIC_NAMES = {"worst_group_balanced_accuracy": "worst-group balanced accuracy",
                "balanced_accuracy": "balanced accuracy"}
LEVEL_NAMES = {"subjects": "test subjects only", "subjects+seeds": "+ classifier seeds",
               "subjects+seeds+generators": "+ generators (all sources)"}
VERDICT_WORDS = {"helped": "the whole interval is above 0",
                 "hurt": "the whole interval is below 0",
                 "inconclusive": "the interval includes 0: no difference shown either way",
                 "undetermined": "the interval could not be computed"}


def _label(arm: str) -> str:
    return ARM_LABELS.get(arm, arm)


def _count(value) -> str:
    """A mean count over runs: an integer as is, else one decimal."""
    if is_missing(value):
        return NA
    return str(int(value)) if float(value).is_integer() else f"{float(value):.1f}"


def _p(value) -> str:
    return NA if is_missing(value) else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def _design(data: dict) -> str:
    cfg = data["config"]
    return (f"{data['test']['n_subjects']} test subjects, {len(cfg['experiment']['seeds'])} classifier seed(s), "
            f"{cfg.get('n_generators', 1)} generator(s)")


def _one_generator(data: dict, verdict: str, *arms: str) -> bool:
    """True when "helped" / "hurt" rests on one generator for an arm that needs synthetic data: the interval then
    leaves generator variance out, so the word speaks of that generator, not of the method."""
    return (verdict in ("helped", "hurt") and data["config"].get("n_generators", 1) == 1
            and bool(set(arms) & set(NEEDS_SYNTHETIC)))


ONE_GENERATOR = " (this generator only)"


def _primary_section(data: dict, rare: Optional[dict] = None) -> str:
    """The declared endpoint in plain words: estimate, CI, verdict, minimum detectable effect; a rare group's
    change (secondary, Holm-corrected) after it."""
    primary = data.get("primary") or {}
    if not primary:
        return "**Primary endpoint.** No arm was run, so there is nothing to estimate."
    what = (f"{METRIC_NAMES.get(primary['metric'], primary['metric'])} of {_label(primary['arm'])} minus "
            f"{_label(primary['baseline'])}")
    head = f"**Primary endpoint** (declared in the config before running): {what}."
    if primary.get("not_run"):
        return head + f" It could not be estimated: {primary['not_run']}."
    level = 100 * (1 - primary.get("alpha", 0.05))
    lines = [f"- Estimate: {fmt(primary['point'], True)}, {level:.0f}% CI {fmt(primary['lo'], True)} to "
             f"{fmt(primary['hi'], True)} (paired hierarchical bootstrap over {_design(data)}).",
             f"- Verdict: **{primary['verdict']}** — {VERDICT_WORDS[primary['verdict']]}"
             + (f"; one generator: the interval leaves generator variance out, so this speaks of that generator, "
                f"not of the method (train more: `generators.extra_seeds`)."
                if _one_generator(data, primary["verdict"], primary["arm"], primary["baseline"]) else "."),
             f"- Minimum detectable effect of this design: {fmt(primary['mde'])} (2.8 × the bootstrap SE "
             f"{fmt(primary['se'])}): a true gain smaller than this would likely be missed (80% power, two-sided "
             f"α = {primary.get('alpha', 0.05)})."]
    for entry in data.get("secondary", []):
        if entry["baseline"] == primary["baseline"] and _is_rare(rare, entry["attribute"], entry["group"] or ""):
            lines.append(f"- The rare group ({ATTRIBUTE_NAMES.get(entry['attribute'], entry['attribute'])} "
                         f"{entry['group']}): balanced accuracy changed by {fmt(entry['point'], True)} (95% CI "
                         f"{fmt(entry['lo'], True)} to {fmt(entry['hi'], True)}; Holm p {_p(entry['p_holm'])}: "
                         f"{entry['verdict']}{ONE_GENERATOR * _one_generator(data, entry['verdict'], primary['arm'])}).")
    return head + "\n\n" + "\n".join(lines)


def _uncertainty_table(data: dict) -> str:
    """Worst-group 95% CI width per arm (and of the primary gain) as variance sources are added."""
    arms, primary = data["arms"], data.get("primary") or {}
    gain = primary.get("width_by_levels")
    headers = ["resampled", *[_label(a) for a in arms]] + (["primary gain"] if gain else [])
    rows = [[LEVEL_NAMES[name], *[fmt(data["intervals"][a]["width_by_levels"][name]) for a in arms]]
            + ([fmt(gain[name])] if gain else []) for name in LEVEL_NAMES]
    return ("Where the uncertainty comes from: width of the 95% CI of worst-group balanced accuracy when only "
            "test subjects are resampled, then also classifier seeds, then also generators (a jump down a column "
            "says that source dominates):\n\n" + markdown_table(headers, rows))


def _secondary_table(data: dict) -> str:
    family = data.get("secondary", [])
    if not family:
        return ""
    rows = [[e["comparison"], METRIC_NAMES.get(e["metric"], e["metric"]),
             "all" if e["attribute"] is None else f"{ATTRIBUTE_NAMES.get(e['attribute'], e['attribute'])} {e['group']}",
             fmt_interval(e, signed=True), _p(e["p"]), _p(e["p_holm"]),
             e["verdict"] + ONE_GENERATOR * _one_generator(data, e["verdict"], *e["comparison"].split(" vs "))]
            for e in family]
    return (f"### Secondary comparisons ({len(family)} tests, Holm-corrected)\n\nEvery comparison other than the "
            "primary endpoint: a bootstrap p-value (two-sided), Holm-corrected over this whole family; the verdict "
            f"says helped / hurt only where the corrected p is below α.\n\n"
            + markdown_table(["comparison", "measure", "group", "gain [95% CI]", "p", "Holm p", "verdict"], rows))


def _rate_name(row: dict) -> str:
    """What a group's balanced accuracy measures: TPR / TNR where the group holds one class (e.g. health groups)."""
    if row["n_positive"] == row["count"]:
        return "TPR"
    return "TNR" if row["n_positive"] == 0 else "bal. acc."


def _counts(row: dict) -> str:
    return "/".join(_count(row.get(k)) for k in ("tp", "fn", "tn", "fp"))


def experiment_section(result, plot_path: Optional[str | Path] = None, rare: Optional[dict] = None,
                       unit: str = "slices") -> str:
    """Primary endpoint first (metric, arms, estimate, CI, verdict, MDE), where the uncertainty comes from, the
    arms with intervals and error counts, the Holm-corrected secondary comparisons, then disparities and
    per-subgroup balanced accuracy with CIs and error counts.

    rare: data.rare's summary (key, value, ...) when one group was made rare: its row is marked and its change
    under the primary arm follows the primary endpoint. unit: what a counted test row is ("patients" when slice
    scores were pooled per patient)."""
    data = as_dict(result)
    arms, agg, test, cfg = data["arms"], data["aggregate"], data["test"], data["config"]
    seeds, n_boot, columns = cfg["experiment"]["seeds"], cfg["experiment"]["n_boot"], _columns(data)
    names = [ATTRIBUTE_NAMES.get(c, c) for c in columns]
    parts = [_primary_section(data, rare)]
    if arms:
        parts.append(_uncertainty_table(data))
    n_train = {arm: next((r["n_train"] for r in data["runs"] if r["arm"] == arm), None) for arm in arms}
    intervals = data["intervals"]
    rows = [[_label(a), f"{intervals[a]['n_generators']} × {intervals[a]['n_seeds']}", n_train[a],
             fmt_interval(intervals[a]["balanced_accuracy"]), fmt_interval(intervals[a]["worst_group_balanced_accuracy"]),
             fmt_mean_std(agg[a]["auroc"]), _counts(intervals[a]["counts"]),
             *[fmt_mean_std(agg[a][c]["balanced_accuracy_gap"]) for c in columns]] for a in arms]
    headers = ["arm", "runs (generators × seeds)", "n train", "balanced accuracy [95% CI]",
               "worst-group bal. acc. [95% CI]", "AUROC (mean ± std)", f"TP/FN/TN/FP (test {unit}, mean over runs)",
               *[f"gap {name} (mean ± std)" for name in names]]
    parts += ["### Arms", markdown_table(headers, rows)]
    parts.append(_secondary_table(data))
    if data["comparison"]:
        arm = (data.get("primary") or {}).get("arm", DEBIASED)
        rows = [[key, ATTRIBUTE_NAMES[col], *[fmt(c["disparity_change"][col][k], True) for k in GAP_NAMES]]
                for key, c in data["comparison"].items() for col in columns]
        parts += [f"Disparity change ({_label(arm)} minus baseline, mean over runs; negative gap / differences and "
                  "positive ratio = fairer):",
                  markdown_table(["comparison", "attribute", *[f"Δ {v}" for v in GAP_NAMES.values()]], rows)]
    rows = [[_label(a), ATTRIBUTE_NAMES[c], fmt_mean_std(agg[a][c]["worst_group_balanced_accuracy"]),
             *[fmt_mean_std(agg[a][c][k]) for k in GAP_NAMES]] for a in arms for c in columns]
    parts += ["### Disparities per group attribute (mean ± std over runs)",
              markdown_table(["arm", "attribute", "worst group bal. acc.", *GAP_NAMES.values()], rows)]
    tables = {a: intervals[a]["subgroups"] for a in arms}
    keys = list(dict.fromkeys((r["attribute"], r["group"]) for a in arms for r in tables[a]))
    info = {(r["attribute"], r["group"]): r for a in arms for r in tables[a]}
    cells = {(a, r["attribute"], r["group"]): r for a in arms for r in tables[a]}
    lead = lambda k: [ATTRIBUTE_NAMES.get(k[0], k[0]), _group_name(rare, *k), info[k]["n_subjects"], info[k]["count"],
                      info[k]["n_positive"]]
    rows = [[*lead(k), _rate_name(info[k]), *[fmt_interval(cells[(a, *k)]) if (a, *k) in cells else NA for a in arms]]
            for k in keys]
    headers = ["attribute", "group", "test subjects", f"test {unit}", f"positive {unit}"]
    parts += ["### Per-subgroup balanced accuracy [95% CI]",
              markdown_table(headers + ["measures", *[_label(a) for a in arms]], rows) if rows
              else f"No test subgroup with a known {' / '.join(names)}."]
    if rows:
        rows = [[*lead(k), *[_counts(cells[(a, *k)]) if (a, *k) in cells else NA for a in arms]] for k in keys]
        parts += [f"Error counts per subgroup: TP/FN/TN/FP over test {unit}, mean over each arm's runs:",
                  markdown_table(headers + [_label(a) for a in arms], rows)]
    if any(_rate_name(info[k]) != "bal. acc." for k in keys):
        parts.append("A group holding one class (e.g. every health group, the label being a function of it) has "
                     "its accuracy as balanced accuracy: the TPR of a positive group, the TNR of a negative one; "
                     "equalized-odds and demographic-parity differences are n/a over such groups.")
    if plot_path is not None:
        parts.append(f"![Per-subgroup balanced accuracy per arm]({Path(plot_path).as_posix()})")
    if data.get("skipped"):
        skipped = "; ".join(f"{_label(a)}: {r}" for a, r in data["skipped"].items())
        parts.append(f"Skipped arms: {skipped}.")
    parts.append(f"Method: test set of {test['n_slices']} slices from {test['n_subjects']} held-out real subjects "
                 f"({test['n_positive']} positive {unit}); classifier seeds {', '.join(map(str, seeds))}; "
                 f"{cfg.get('n_generators', 1)} separately trained generator(s), each arm using synthetic data run "
                 f"once per generator × seed; threshold {cfg['threshold']}. Model selection (best epoch) on "
                 f"{100 * cfg['experiment']['val_fraction']:.0f}% of each arm's own training subjects. Groups: "
                 f"{', '.join(names)}; arm (b) draws each label x {' x '.join(names)} metagroup equally often. "
                 f"Intervals: {n_boot} replicates of a paired hierarchical bootstrap (test subjects, then generators, "
                 "then classifier seeds within each drawn generator, each with replacement; the same draw in every "
                 "arm); an arm's number is the "
                 "mean over its runs.")
    return "\n\n".join(p for p in parts if p)


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
