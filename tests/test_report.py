"""Tests for classify/report.py and classify/plots.py: sections carry the result's numbers, valid PNG figures."""
import copy
import json

import pandas as pd
import pytest
import torch
from PIL import Image

import classify.experiment as experiment
from classify.experiment import ARM_LABELS, ExperimentConfig, labels_of, run_experiment
from classify.plots import composition_plot, subgroup_bar_plot
from classify.report import (composition_counts, composition_section, experiment_section, fmt, fmt_interval,
                             fmt_mean_std, markdown_table, render_report, reproduce_section,
                             write_report)
from tests.test_experiment import TINY, TRAIN, Spy, toy_problem


@pytest.fixture(scope="module")
def toy():
    """An experiment result on the toy problem, with training and prediction stubbed (scores track the label)."""
    torch.set_num_threads(1)
    real, test, syn = toy_problem()
    spy = Spy(labels_of(test), vary=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "train_classifier", spy.train)
        patch.setattr(experiment, "predict_proba", spy.predict)
        cfg = ExperimentConfig(arms=("real", "reweighted", "real+synthetic"), seeds=(0, 1), n_boot=30)
        result = run_experiment(real, test, [syn], cfg, TINY, TRAIN, progress=False)
    return result, real, syn


def test_formatting_uses_three_decimals_and_n_a():
    assert fmt(0.12345) == "0.123" and fmt(float("nan")) == "n/a" and fmt(None) == "n/a" and fmt(7) == "7"
    assert fmt(0.05, signed=True) == "+0.050"
    assert fmt_mean_std({"mean": 0.5, "std": 0.01}) == "0.500 ± 0.010"
    assert fmt_mean_std({"mean": 0.5, "std": None}) == "0.500"  # one seed: no std
    assert fmt_interval({"point": 0.7, "lo": 0.6, "hi": 0.8}) == "0.700 [0.600, 0.800]"
    table = markdown_table(["group", "x"], [["female | <55", 0.25]]).splitlines()
    assert table[2] == "| female \\| <55 | 0.250 |" and table[1] == "|---|---|"


@pytest.mark.slow
def test_render_report_keeps_every_section_in_order(toy, tmp_path):
    result, real, syn = toy
    after = pd.concat([real.attributes, syn.attributes])
    sections = {"Cohort composition": composition_section(real.attributes, after),
                "Debiasing experiment": experiment_section(result, "figures/subgroups.png"),
                "Reproduce": reproduce_section(["python train.py --config configs/tiny.yaml"], "name: tiny\n"),
                "Empty": ""}
    text = render_report(sections, title="Toy report")
    assert text.startswith("# Toy report\n")
    positions = [text.index(f"\n## {heading}\n") for heading in sections]
    assert positions == sorted(positions)
    assert "_n/a_" in text.split("## Empty")[1]
    path = write_report(tmp_path / "out" / "report.md", sections, title="Toy report")
    assert path.read_text() == text and not list(path.parent.glob(".*tmp"))


@pytest.mark.slow
def test_experiment_section_shows_the_results_numbers(toy):
    result, _, _ = toy
    text = experiment_section(result, "figures/subgroups.png")
    primary_part, rest = text.split("### Arms")
    primary = result.primary
    assert primary_part.startswith("**Primary endpoint** (declared in the config before running): worst-group "
                                   "balanced accuracy of (c) real+synthetic minus (b) reweighted.")
    assert (f"{fmt(primary['point'], True)}, 95% CI {fmt(primary['lo'], True)} to {fmt(primary['hi'], True)}"
            in primary_part and f"**{primary['verdict']}**" in primary_part)
    assert f"Minimum detectable effect of this design: {fmt(primary['mde'])}" in primary_part
    for arm in result.arms:
        intervals = result.intervals[arm]
        assert fmt_interval(intervals["worst_group_balanced_accuracy"]) in rest
        assert fmt_interval(intervals["balanced_accuracy"]) in rest
        for width in intervals["width_by_levels"].values():
            assert fmt(width) in primary_part  # the uncertainty-source table sits right after the primary result
        for row in intervals["subgroups"].to_dict("records"):
            assert fmt_interval(row) in text
    secondary = rest.split("### Secondary comparisons")[1].split("Disparity change")[0]
    assert f"({len(result.secondary)} tests, Holm-corrected)" in secondary
    for entry in result.secondary:
        assert fmt_interval(entry, signed=True) in secondary and entry["verdict"] in secondary
    assert "![Per-subgroup balanced accuracy per arm](figures/subgroups.png)" in text
    assert f"{result.test['n_subjects']} held-out real subjects" in text


@pytest.mark.slow
def test_error_counts_sit_beside_the_rates(toy):
    result, _, _ = toy
    text = experiment_section(result)
    counts = result.intervals["real"]["counts"]
    assert "TP/FN/TN/FP" in text.split("### Arms")[1].split("\n")[2]  # a column of the arm table
    row = next(line for line in text.splitlines() if line.startswith("| (a) real | 1 × 2 |"))
    assert "/".join(str(int(counts[k])) if counts[k] == int(counts[k]) else f"{counts[k]:.1f}"
                    for k in ("tp", "fn", "tn", "fp")) in row
    pooled = experiment_section(result, unit="patients")  # cross-validation scores each patient once
    assert "test patients" in pooled and "positive patients" in pooled and "test slices" not in pooled
    errors = text.split("Error counts per subgroup")[1]
    female = result.intervals["reweighted"]["subgroups"].set_index("group").loc["female"]
    assert f"| sex | female | {female['n_subjects']} | {female['count']} |" in errors


@pytest.mark.slow
def test_verdict_words_follow_the_primary_verdict(toy):
    data = json.loads(toy[0].to_json())  # the saved experiment.json renders the same way
    for verdict, words in (("helped", "the whole interval is above 0"), ("inconclusive", "the interval includes 0"),
                           ("hurt", "the whole interval is below 0")):
        data["primary"]["verdict"] = verdict
        assert f"Verdict: **{verdict}** — {words}" in experiment_section(data)
    without_c = copy.deepcopy(data)
    without_c["arms"].remove("real+synthetic")
    del without_c["intervals"]["real+synthetic"]
    without_c["primary"] = {"metric": "worst_group_balanced_accuracy", "arm": "real+synthetic",
                            "baseline": "reweighted", "not_run": "real+synthetic: no synthetic samples"}
    without_c["comparison"], without_c["secondary"] = {}, []
    without_c["skipped"] = {"real+synthetic": "no synthetic samples"}
    text = experiment_section(without_c)
    assert "It could not be estimated: real+synthetic: no synthetic samples." in text
    assert "Secondary comparisons" not in text and "Skipped arms: (c) real+synthetic: no synthetic samples." in text


@pytest.mark.slow
def test_composition_counts_positives_per_subgroup(toy):
    _, real, syn = toy
    before, after = real.attributes, pd.concat([real.attributes, syn.attributes], ignore_index=True)
    counts = composition_counts(before)
    positive = before["health"] == "heart_failure"
    female = counts[(counts["attribute"] == "sex") & (counts["group"] == "female")].iloc[0]
    assert female["n"] == (before["sex"] == "female").sum()
    assert female["n_positive"] == (positive & (before["sex"] == "female")).sum()
    for attribute in ("sex", "age_group", "bmi_group"):
        part = counts[counts["attribute"] == attribute]
        assert part["n"].sum() == len(before) and part["n_positive"].sum() == positive.sum()
    # a count table (one row per cell with a "count" column) gives the same numbers as one row per sample
    cells = before.groupby(["sex", "age", "bmi", "health"]).size().reset_index(name="count")
    pd.testing.assert_frame_equal(composition_counts(cells), counts)
    text = composition_section(before, after)
    n_syn_female_pos = ((syn.attributes["sex"] == "female") & (syn.attributes["health"] == "heart_failure")).sum()
    row = f"| sex | female | {female['n']} | {female['n_positive']} |"
    assert row in text and f"| {female['n_positive'] + n_syn_female_pos} |" in text
    assert f"+{len(syn)} synthetic" in text


def _assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    assert not list(path.parent.glob(".*tmp"))


@pytest.mark.slow
def test_plots_write_valid_pngs(toy, tmp_path):
    result, real, syn = toy
    _assert_png(subgroup_bar_plot(result, tmp_path / "figs" / "subgroups.png"))
    data = json.loads(result.to_json())
    for arm in data["arms"]:  # a cohort without sex / age / BMI (ACDC) has no subgroups to plot
        data["intervals"][arm]["subgroups"] = []
    _assert_png(subgroup_bar_plot(data, tmp_path / "empty.png"))
    after = pd.concat([real.attributes, syn.attributes], ignore_index=True)
    _assert_png(composition_plot(real.attributes, after, tmp_path / "composition.png"))


@pytest.mark.slow
def test_rare_group_setting_and_health_groups_are_reported(tmp_path):
    from data.planner import PlanTarget, plan_rebalancing, planning_attributes
    from data.rare import RareGroup, make_rare
    from classify.report import rare_section
    from tests.test_comparisons import ACDC_POSITIVE, health_slices

    real, summary = make_rare(health_slices(16, 0, "train-"), RareGroup(value="myocardial_infarction", keep=0.5), 0)
    test, syn = health_slices(16, 1, "test-"), health_slices(8, 2, "")
    spy = Spy(labels_of(test, ACDC_POSITIVE), vary=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "train_classifier", spy.train)
        patch.setattr(experiment, "predict_proba", spy.predict)
        cfg = ExperimentConfig(seeds=(0, 1), n_boot=20, positive=ACDC_POSITIVE, groups=("health",))
        data = json.loads(run_experiment(real, test, [syn], cfg, TINY, TRAIN, progress=False).to_json())
    text = experiment_section(data, rare=summary)
    for comparison in data["comparison"].values():
        gain = next(g for g in comparison["group_gains"] if g["group"] == "myocardial_infarction")
        assert fmt_interval(gain, signed=True) in text
    gain = next(g for g in data["comparison"]["real+synthetic vs reweighted"]["group_gains"]
                if g["group"] == "myocardial_infarction")
    assert (f"The rare group (health group myocardial_infarction): balanced accuracy changed by "
            f"{fmt(gain['point'], True)}" in text.split("###")[0])  # said right after the primary endpoint
    assert "| health group | myocardial_infarction (rare) | 4 | 8 | 8 | TPR |" in text
    assert "| health group | healthy | 4 | 8 | 0 | TNR |" in text and "gap health group" in text
    assert "Secondary comparisons" in text and "its accuracy as balanced accuracy" in text
    assert "sex" not in text.split("### Arms")[1].split("Method:")[0]  # nothing about attributes ACDC lacks
    plan = plan_rebalancing(planning_attributes(real), PlanTarget(keys=("health",)), seed=0)
    words = rare_section(summary, plan)
    assert "kept 2 of 4" in words and summary["dropped"][0] in words
    assert f"adds {(plan['health'] == 'myocardial_infarction').sum()} synthetic health = myocardial_infarction" in words
    counts = composition_section(real.attributes, pd.concat([real.attributes, syn.attributes]), ACDC_POSITIVE,
                                 ("health",))
    assert "| health group | myocardial_infarction | 4 | 4 | 1.000 | 8 | 8 | 1.000 |" in counts


def test_a_verdict_on_one_generator_says_it_speaks_of_that_generator():
    from classify.report import _primary_section, _secondary_table

    def entry(comparison, verdict):
        return {"comparison": comparison, "baseline": comparison.split(" vs ")[1], "metric": "balanced_accuracy",
                "attribute": None, "group": None, "point": -0.05, "lo": -0.1, "hi": -0.01, "p": 0.01,
                "p_holm": 0.02, "verdict": verdict}

    data = {"config": {"n_generators": 1}, "test": {"n_subjects": 200}, "secondary": [
        entry("real+synthetic vs real", "hurt"), entry("reweighted vs real", "hurt"),
        entry("real+synthetic vs oversampled", "inconclusive")]}
    table = _secondary_table(data)
    assert "| hurt (this generator only) |" in table  # a synthetic arm on one generator
    assert table.count("(this generator only)") == 1  # real-only arms have no generator; inconclusive needs no note
    data["config"]["experiment"] = {"seeds": [0, 1, 2]}
    data["primary"] = {"metric": "worst_group_balanced_accuracy", "arm": "real+synthetic", "baseline": "oversampled",
                       "point": -0.05, "lo": -0.1, "hi": -0.01, "verdict": "hurt", "mde": 0.08, "se": 0.03}
    assert "the whole interval is below 0; one generator: the interval leaves generator variance out" in \
        _primary_section(data)
    data["config"]["n_generators"] = 3
    assert "(this generator only)" not in _secondary_table(data) and "one generator:" not in _primary_section(data)
