"""Tests for classify/comparisons.py: intervals, the primary endpoint and the baseline comparisons of toy experiments
(the toy problem and its stubs: tests/test_experiment.py; the really trained toy_result: tests/conftest.py)."""
import json

import numpy as np
import pytest

import classify.experiment as experiment
from classify.experiment import ExperimentConfig, labels_of, run_experiment
from data.slices import SliceSet
from tests.test_experiment import CORE, RUNNABLE, TINY, TRAIN, Spy, spied_run, toy_problem, toy_slices


@pytest.mark.slow
def test_intervals_bracket_the_seed_mean_and_match_fairlearn_per_group(toy_result):
    result, _ = toy_result
    for arm in result.arms:
        intervals = result.intervals[arm]
        for key in ("balanced_accuracy", "worst_group_balanced_accuracy"):
            ci = intervals[key]
            assert ci["lo"] <= ci["point"] <= ci["hi"]
            assert ci["point"] == pytest.approx(result.aggregate[arm][key]["mean"])
        tables = [r["subgroups"] for r in result.runs if r["arm"] == arm]
        for row in intervals["subgroups"].itertuples():
            assert row.lo <= row.point <= row.hi
            per_seed = [t.loc[(t["grouping"] == row.attribute) & (t["group"] == row.group), "balanced_accuracy"].item()
                        for t in tables]
            assert row.point == pytest.approx(np.mean(per_seed))
    assert len(result.intervals["real"]["subgroups"]) == 2 + 3 + 3  # sex, age and BMI groups of the toy test set


@pytest.mark.slow
def test_comparison_of_arm_c_against_every_baseline(toy_result):
    result, _ = toy_result
    baselines = [a for a in RUNNABLE if experiment.ARM_ROLES.get(a, "baseline") == "baseline"]
    assert set(result.comparison) == {f"real+synthetic vs {b}" for b in baselines}  # every baseline, none skipped
    for comp in result.comparison.values():
        base = result.aggregate[comp["baseline"]]
        gain = comp["gain"]
        expected = result.aggregate["real+synthetic"]["worst_group_balanced_accuracy"]["mean"] \
            - base["worst_group_balanced_accuracy"]["mean"]
        assert gain["point"] == pytest.approx(expected) and gain["lo"] <= gain["point"] <= gain["hi"]
        assert gain["verdict"] in ("helped", "hurt", "inconclusive") and 0 < gain["p"] <= 1
        if comp["primary"]:  # the declared endpoint: its verdict is the primary one, outside the Holm family
            assert comp["baseline"] == "reweighted" and gain["verdict"] == result.primary["verdict"]
            assert (result.primary["point"], result.primary["lo"]) == (gain["point"], gain["lo"])
        else:
            assert gain["p_holm"] >= gain["p"]
        assert comp["disparity_change"]["sex"]["balanced_accuracy_gap"] == pytest.approx(
            result.aggregate["real+synthetic"]["sex"]["balanced_accuracy_gap"]["mean"]
            - base["sex"]["balanced_accuracy_gap"]["mean"])


ACDC_POSITIVE = ("dilated_cardiomyopathy", "myocardial_infarction")
ACDC_GROUPS = ("dilated_cardiomyopathy", "healthy", "myocardial_infarction", "hypertrophic_cardiomyopathy")


def health_slices(n_subjects: int, seed: int, prefix: str, per_subject: int = 2) -> SliceSet:
    """Like toy_slices, but grouped by health only (no sex, age or BMI, as ACDC): subject k has ACDC_GROUPS[k % 4]."""
    health = [ACDC_GROUPS[k % len(ACDC_GROUPS)] for k in range(n_subjects)]
    slices = toy_slices(n_subjects, 0.5, seed, prefix, per_subject, labels=[int(h in ACDC_POSITIVE) for h in health])
    attributes = slices.attributes.assign(health=np.repeat(health, per_subject), sex=None, age=np.nan, bmi=np.nan)
    return SliceSet(slices.images, slices.masks, slices.subject_ids, slices.slice_index, attributes)


@pytest.mark.slow
def test_health_groups_give_per_group_accuracy_worst_group_and_gains(monkeypatch):
    real, test, syn = health_slices(16, 0, "train-"), health_slices(16, 1, "test-"), health_slices(8, 2, "")
    cfg = ExperimentConfig(arms=CORE, seeds=(0, 1), n_boot=20, positive=ACDC_POSITIVE, groups=("health",))
    spy = Spy(labels_of(test, ACDC_POSITIVE), vary=True)  # every run scores differently: the arms differ
    monkeypatch.setattr(experiment, "train_classifier", spy.train)
    monkeypatch.setattr(experiment, "predict_proba", spy.predict)
    result = run_experiment(real, test, [syn], cfg, TINY, TRAIN, progress=False)
    assert all(call["metagroups"] == ("health",) for call in spy.train_calls)  # arm (b) balances health groups
    y, health = labels_of(test, ACDC_POSITIVE), test.attributes["health"].to_numpy()
    for arm in CORE:
        preds = [(r["scores"] >= 0.5).astype(int) for r in result.runs if r["arm"] == arm]
        table = result.intervals[arm]["subgroups"]
        assert list(table["attribute"]) == ["health"] * 4 and set(table["group"]) == set(ACDC_GROUPS)
        accuracy = {}
        for row in table.itertuples():
            rows = health == row.group
            accuracy[row.group] = np.mean([np.mean(p[rows] == y[rows]) for p in preds])  # TPR or TNR, by hand
            assert row.point == pytest.approx(accuracy[row.group]) and row.lo <= row.point <= row.hi
        worst = np.mean([min(np.mean(p[health == g] == y[health == g]) for g in ACDC_GROUPS) for p in preds])
        assert result.aggregate[arm]["worst_group_balanced_accuracy"]["mean"] == pytest.approx(worst)
        gap = result.aggregate[arm]["health"]["balanced_accuracy_gap"]["mean"]
        assert gap == pytest.approx(np.mean([max(np.mean(p[health == g] == y[health == g]) for g in ACDC_GROUPS)
                                             - min(np.mean(p[health == g] == y[health == g]) for g in ACDC_GROUPS)
                                             for p in preds]))
        if arm == "real+synthetic":
            debiased = accuracy
    for comparison in result.comparison.values():
        baseline = result.intervals[comparison["baseline"]]["subgroups"].set_index("group")["point"]
        gains = {g["group"]: g for g in comparison["group_gains"]}
        assert set(gains) == set(ACDC_GROUPS) and all(g["attribute"] == "health" for g in gains.values())
        for group, gain in gains.items():
            assert gain["point"] == pytest.approx(debiased[group] - baseline[group])
            assert gain["lo"] <= gain["point"] <= gain["hi"]
        assert set(comparison["disparity_change"]) == {"health"}
    assert json.loads(result.to_json())["config"]["experiment"]["groups"] == ["health"]


@pytest.mark.slow
def test_every_generator_x_seed_runs_and_identical_arms_give_a_zero_gain(monkeypatch):
    """Synthetic arms run once per generator x seed; with every run scoring alike (Spy without vary) the arms are
    identical, so every paired gain is exactly 0 and no verdict may claim an effect."""
    real, test, syn = toy_problem()
    second = toy_slices(12, 0.15, 3, "", per_subject=1)  # a second, separately "trained" generator's samples
    cfg = ExperimentConfig(arms=("real", "reweighted", "real+synthetic"), seeds=(0, 1, 2), n_boot=40)
    spy, result = spied_run(monkeypatch, real, test, [syn, second], cfg)
    assert len(spy.train_calls) == 2 * 3 + 2 * 3 and result.config["n_generators"] == 2
    runs = [(r["arm"], r["generator"], r["seed"]) for r in result.runs]
    assert runs[6:] == [("real+synthetic", g, s) for g in (0, 1) for s in (0, 1, 2)]
    assert runs[:3] == [("real", None, s) for s in (0, 1, 2)]
    assert np.array_equal(spy.train_calls[9]["images"][len(real):], second.images)  # generator 1's own samples
    assert result.intervals["real+synthetic"]["n_generators"] == 2 and result.intervals["real"]["n_generators"] == 1
    primary = result.primary
    assert (primary["arm"], primary["baseline"], primary["metric"]) == ("real+synthetic", "reweighted",
                                                                        "worst_group_balanced_accuracy")
    assert (primary["point"], primary["lo"], primary["hi"], primary["se"]) == (0.0, 0.0, 0.0, 0.0)
    assert primary["verdict"] == "inconclusive" and primary["p"] == 1.0
    assert result.secondary and all(s["verdict"] == "inconclusive" and s["p_holm"] == 1.0 for s in result.secondary)
    assert {s["comparison"] for s in result.secondary} == {"real+synthetic vs real", "real+synthetic vs reweighted"}
    assert not any(s["baseline"] == "reweighted" and s["group"] is None for s in result.secondary)  # primary is apart
    counts = result.intervals["real"]["counts"]
    y = labels_of(test)
    assert counts["tp"] + counts["fn"] == y.sum() and counts["tn"] + counts["fp"] == len(y) - y.sum()
    for row in result.intervals["real"]["subgroups"].itertuples():
        assert row.tp + row.fn == row.n_positive and row.tn + row.fp == row.count - row.n_positive
