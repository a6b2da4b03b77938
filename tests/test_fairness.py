"""Tests for classify/fairness.py against hand-computed confusion matrices."""
import numpy as np
import pandas as pd
import pytest

from classify.fairness import balanced_accuracy, fairness_summary, sensitive_frame, subgroup_metrics, worst_group_balanced_accuracy
from data.errors import InputError

# Group F (6): y_true 1 1 1 0 0 0, y_pred 1 1 0 0 0 1 -> TP 2 FN 1 TN 2 FP 1
# Group M (4): y_true 1 1 0 0,       y_pred 1 1 1 0     -> TP 2 FN 0 TN 1 FP 1
Y_TRUE = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 0])
Y_PRED = np.array([1, 1, 0, 0, 0, 1, 1, 1, 1, 0])
# M scores: positives 0.9, 0.4 vs negatives 0.6, 0.1 -> 3 of 4 pairs ordered -> AUROC 0.75
Y_SCORE = np.array([0.8, 0.7, 0.2, 0.3, 0.1, 0.75, 0.9, 0.4, 0.6, 0.1])
GROUPS = pd.DataFrame({
    "sex": ["F"] * 6 + ["M"] * 4,
    "age": [40, 70, 40, 70, 40, 70, 40, 70, 40, 70],
    "bmi": [22, 22, 27, 27, 33, 33, 22, 27, 33, None],
})


def _row(table, grouping, group):
    row = table[(table["grouping"] == grouping) & (table["group"] == group)]
    assert len(row) == 1
    return row.iloc[0]


def test_per_group_metrics_match_hand_computation():
    table = subgroup_metrics(Y_TRUE, Y_PRED, Y_SCORE, GROUPS)
    f, m = _row(table, "sex", "female"), _row(table, "sex", "male")
    assert (f["count"], f["n_positive"], m["count"], m["n_positive"]) == (6, 3, 4, 2)
    assert f["accuracy"] == pytest.approx(4 / 6) and m["accuracy"] == pytest.approx(3 / 4)
    assert f["tpr"] == pytest.approx(2 / 3) and f["fpr"] == pytest.approx(1 / 3)
    assert m["tpr"] == pytest.approx(1.0) and m["fpr"] == pytest.approx(1 / 2)
    assert f["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 / 2) / 2)
    # F pairs (pos > neg): 0.8 beats all 3, 0.7 beats 0.3 and 0.1, 0.2 beats 0.1 -> 6 of 9
    assert f["auroc"] == pytest.approx(6 / 9) and m["auroc"] == pytest.approx(3 / 4)
    overall = table.iloc[0]
    assert overall["grouping"] == "overall" and overall["count"] == 10
    assert overall["accuracy"] == pytest.approx(7 / 10) and overall["tpr"] == pytest.approx(4 / 5)


def test_single_class_group_has_nan_auroc_and_rate():
    table = subgroup_metrics(Y_TRUE, Y_PRED, Y_SCORE, GROUPS)
    # male with BMI > 30 is row 8 only: a negative predicted positive
    row = _row(table, "sex x bmi_group", "male | >30")
    assert row["count"] == 1 and np.isnan(row["auroc"]) and np.isnan(row["tpr"]) and row["fpr"] == 1.0
    assert row["balanced_accuracy"] == 0.0  # only specificity is defined, and it is 0


def test_groupings_partition_the_rows_and_match_direct_subsets():
    table = subgroup_metrics(Y_TRUE, Y_PRED, Y_SCORE, GROUPS)
    assert set(table["grouping"]) == {"overall", "sex", "age_group", "bmi_group", "sex x age_group",
                                      "sex x bmi_group", "sex x age_group x bmi_group"}
    for grouping, rows in table[table["grouping"] != "overall"].groupby("grouping"):
        assert rows["count"].sum() == len(Y_TRUE) and (rows["count"] > 0).all()
    assert _row(table, "bmi_group", "unknown")["count"] == 1  # the missing BMI
    row = _row(table, "sex x age_group x bmi_group", "female | 65+ | 25-30")  # index 3 only
    assert row["count"] == 1 and row["accuracy"] == 1.0


def test_summary_worst_group_disparities_and_fairlearn_differences():
    s = fairness_summary(Y_TRUE, Y_PRED, Y_SCORE, GROUPS)["sex"]
    assert s["worst_group"] == "female"
    assert s["worst_group_balanced_accuracy"] == pytest.approx(2 / 3)
    assert s["balanced_accuracy_gap"] == pytest.approx(3 / 4 - 2 / 3)
    assert s["balanced_accuracy_ratio"] == pytest.approx((2 / 3) / (3 / 4))
    # equalized odds: max(|TPR_F - TPR_M|, |FPR_F - FPR_M|) = max(1/3, 1/6)
    assert s["equalized_odds_difference"] == pytest.approx(1 / 3)
    # demographic parity: selection rates F 3/6, M 3/4
    assert s["demographic_parity_difference"] == pytest.approx(1 / 4)


def test_summary_overall_and_unknown_groups_left_out():
    summary = fairness_summary(Y_TRUE, Y_PRED, Y_SCORE, GROUPS)
    assert summary["overall"]["balanced_accuracy"] == pytest.approx((4 / 5 + 3 / 5) / 2)
    assert summary["bmi_group"]["n_groups"] == 3  # <25, 25-30, >30; "unknown" not ranked
    singles = [summary[c]["worst_group_balanced_accuracy"] for c in ("sex", "age_group", "bmi_group")]
    assert summary["worst_group_balanced_accuracy"] == pytest.approx(min(singles))


@pytest.mark.parametrize("column", ["sex", "age_group", "bmi_group"])
def test_fast_worst_group_matches_summary(column):
    fast = worst_group_balanced_accuracy(Y_TRUE, Y_PRED, Y_SCORE, GROUPS, column=column)
    summary = fairness_summary(Y_TRUE, Y_PRED, Y_SCORE, GROUPS)[column]
    assert fast == pytest.approx(summary["worst_group_balanced_accuracy"])


def test_equalized_odds_ignores_groups_missing_a_class():
    # group C has no positives: fairlearn alone would score its TPR as 0 and report a gap of 1
    y_true = np.array([1, 0, 1, 0, 0, 0])
    y_pred = np.array([1, 0, 1, 0, 1, 0])
    groups = pd.DataFrame({"sex": ["F", "F", "M", "M", "M", "M"], "age_group": ["<55"] * 6, "bmi_group": ["<25"] * 6})
    s = fairness_summary(y_true, y_pred, y_pred.astype(float), groups)["sex"]
    assert s["equalized_odds_difference"] == pytest.approx(1 / 3)  # FPR F 0 vs M 1/3, TPR both 1


def test_sensitive_frame_bins_raw_values_and_marks_missing():
    frame = sensitive_frame(pd.DataFrame({"sex": ["M", None], "age": [54.9, np.nan], "bmi": [30.0, 24.9]}))
    assert frame.to_dict("list") == {"sex": ["male", "unknown"], "age_group": ["<55", "unknown"],
                                     "bmi_group": [">30", "<25"]}


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match="y_pred"):
        subgroup_metrics(Y_TRUE, Y_PRED[:-1], Y_SCORE, GROUPS)
    with pytest.raises(InputError, match="age"):
        subgroup_metrics(Y_TRUE, Y_PRED, Y_SCORE, GROUPS.drop(columns="age"))
    with pytest.raises(InputError, match="sex"):
        subgroup_metrics(Y_TRUE, Y_PRED, Y_SCORE, GROUPS.assign(sex="X"))


def test_health_groups_report_accuracy_as_tpr_or_tnr():
    # DCM (positive): y_pred 1 1 0 -> TPR 2/3; NOR (negative): 0 0 0 1 -> TNR 3/4; MINF (positive): 0 0 -> TPR 0
    health = ["dilated_cardiomyopathy"] * 3 + ["healthy"] * 4 + ["myocardial_infarction"] * 2
    y_true = np.array([1, 1, 1, 0, 0, 0, 0, 1, 1])
    y_pred = np.array([1, 1, 0, 0, 0, 0, 1, 0, 0])
    groups = pd.DataFrame({"health": health, "sex": [None] * 9})  # no sensitive attributes, as in ACDC
    table = subgroup_metrics(y_true, y_pred, y_pred.astype(float), groups, columns=("health",))
    assert set(table["grouping"]) == {"overall", "health"}
    for group, expected in (("dilated_cardiomyopathy", 2 / 3), ("healthy", 3 / 4), ("myocardial_infarction", 0.0)):
        row = _row(table, "health", group)
        assert row["balanced_accuracy"] == pytest.approx(expected) and row["accuracy"] == pytest.approx(expected)
    assert _row(table, "health", "healthy")["fpr"] == pytest.approx(1 / 4)
    s = fairness_summary(y_true, y_pred, y_pred.astype(float), groups, columns=("health",))
    assert s["health"]["worst_group"] == "myocardial_infarction" and s["worst_group_balanced_accuracy"] == 0.0
    assert s["health"]["balanced_accuracy_gap"] == pytest.approx(3 / 4) and s["health"]["balanced_accuracy_ratio"] == 0
    # the label is a function of the group: equalized odds and demographic parity are n/a, not misleading numbers
    assert np.isnan(s["health"]["equalized_odds_difference"]) and np.isnan(s["health"]["demographic_parity_difference"])
    assert worst_group_balanced_accuracy(y_true, y_pred, None, groups, column="health") == 0.0
    with pytest.raises(InputError, match="expected distinct names from sex, age_group, bmi_group, health"):
        fairness_summary(y_true, y_pred, None, groups, columns=("ethnicity",))
    with pytest.raises(InputError, match="missing column 'health'"):
        subgroup_metrics(y_true, y_pred, None, groups.drop(columns="health"), columns=("health",))


def test_balanced_accuracy_of_columns_is_each_column_on_its_own():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 2, 40), rng.integers(0, 2, (40, 3))
    columns = balanced_accuracy(y_true, y_pred)
    assert columns.shape == (3,)
    for k in range(3):
        tpr, tnr = y_pred[y_true == 1, k].mean(), 1 - y_pred[y_true == 0, k].mean()
        assert columns[k] == balanced_accuracy(y_true, y_pred[:, k]) == pytest.approx((tpr + tnr) / 2)
    assert balanced_accuracy(np.ones(4), np.array([1, 1, 0, 1])) == 0.75  # one class present: its rate alone
    assert np.isnan(balanced_accuracy(np.zeros(0), np.zeros((0, 2)))).all()
