import numpy as np
import pandas as pd
import pytest

from data.errors import InputError
from data.subgroups import format_composition, imbalance_summary, save_composition, subgroup_table


def _cohort(seed: int = 0, n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "sex": rng.choice(["female", "male", "F"], n),
        "age": rng.uniform(20, 89, n),
        "bmi": rng.uniform(16, 40, n),
        "health": rng.choice(["healthy", "heart_failure", "Heart failure"], n, p=[0.7, 0.2, 0.1]),
    })
    df.loc[:9, "sex"] = None
    df.loc[5:14, "age"] = np.nan
    df.loc[12:19, "health"] = None
    return df


def test_counts_account_for_every_subject_and_match_a_direct_count():
    df = _cohort()
    table = subgroup_table(df)
    assert list(table.columns) == ["sex", "age_decade", "bmi_category", "health", "count", "share"]
    assert table["count"].sum() == len(df)
    assert (table["count"] > 0).all()
    assert np.isclose(table["share"].sum(), 1.0)
    assert not table.duplicated(["sex", "age_decade", "bmi_category", "health"]).any()
    # One cell checked against a direct count on the raw frame (aliases F / "Heart failure" merged).
    female = df["sex"].isin(["female", "F"])
    hf = df["health"].isin(["heart_failure", "Heart failure"])
    direct = (female & hf & (df["age"] // 10 == 4) & (df["bmi"] >= 25) & (df["bmi"] < 30)).sum()
    cell = table[(table.sex == "female") & (table.health == "heart_failure") & (table.age_decade == "40s")
                 & (table.bmi_category == "overweight")]
    assert (cell["count"].sum() if len(cell) else 0) == direct


def test_missing_values_become_unknown_not_dropped():
    table = subgroup_table(_cohort())
    by = lambda key: table.groupby(key)["count"].sum()  # noqa: E731
    assert by("sex")["unknown"] == 10
    assert by("age_decade")["unknown"] == 10
    assert by("health")["unknown"] == 8
    assert table["sex"].iloc[-1] == "unknown"  # unknown sorts last


def test_imbalance_summary():
    df = pd.DataFrame({"sex": ["female"] * 6 + ["male"] * 2, "age": [45] * 6 + [71, 72],
                       "bmi": [22] * 6 + [33, 33], "health": ["healthy"] * 5 + ["heart_failure"] + [None, "healthy"]})
    summary = imbalance_summary(subgroup_table(df))
    assert summary["n_subjects"] == 8
    assert summary["n_cells"] == 4  # F/40s/normal/healthy x5, F/.../HF x1, M/70s/obese/unknown x1, M/.../healthy x1
    assert (summary["max_count"], summary["min_count"], summary["max_min_ratio"]) == (5, 1, 5.0)
    marginals = summary["marginals"]
    assert marginals["sex"] == {"female": 6, "male": 2}
    assert marginals["health x sex"] == {"healthy": {"female": 5, "male": 1}, "heart_failure": {"female": 1},
                                         "unknown": {"male": 1}}
    assert marginals["health x bmi_category"]["healthy"] == {"normal": 5, "obese": 1}
    assert marginals["health x age_decade"]["healthy"] == {"40s": 5, "70s": 1}
    assert list(marginals["health"]) == ["healthy", "heart_failure", "unknown"]  # vocabulary order


def test_empty_cohort_and_bad_input():
    empty = subgroup_table(pd.DataFrame({"sex": [], "age": [], "bmi": [], "health": []}))
    assert len(empty) == 0 and imbalance_summary(empty)["max_min_ratio"] is None
    with pytest.raises(InputError, match="bmi"):
        subgroup_table(pd.DataFrame({"sex": ["male"], "age": [40], "health": ["healthy"]}))
    with pytest.raises(InputError, match="row 1: age"):
        subgroup_table(pd.DataFrame({"sex": ["male", "male"], "age": [40, 400], "bmi": [20, 20], "health": [None, None]}))


def test_format_and_atomic_save(tmp_path):
    table = subgroup_table(_cohort())
    text = format_composition(table)
    assert "200 subjects" in text and "health x sex" in text and "unknown" in text
    path = save_composition(table, tmp_path / "out" / "composition.csv")
    back = pd.read_csv(path, keep_default_na=False)
    assert back["count"].tolist() == table["count"].tolist()
    assert back["sex"].tolist() == table["sex"].tolist()
    assert [p.name for p in path.parent.iterdir()] == ["composition.csv"]  # no temp file left behind
