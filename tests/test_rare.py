"""Tests for data/rare.py: which training subjects data.rare keeps, and its one-line errors."""
import numpy as np
import pandas as pd
import pytest

from data.errors import InputError
from data.rare import RareGroup, describe, make_rare, members
from data.slices import SliceSet
from run.config import load_run_config

HEALTH = ("healthy", "myocardial_infarction", "dilated_cardiomyopathy")


def toy_train(n_subjects: int = 12, per_subject: int = 3) -> SliceSet:
    """Subjects s00.. cycling through HEALTH, several slices each; s11's health is unknown."""
    records = [{"subject_id": f"s{k:02d}", "sex": None, "age": None, "bmi": 20.0 + k,
                "health": None if k == n_subjects - 1 else HEALTH[k % len(HEALTH)], "prompt": ""}
               for k in range(n_subjects) for _ in range(per_subject)]
    n = len(records)
    images = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 4, 4), np.float32) / n
    return SliceSet(images, np.zeros((n, 2, 4, 4), np.uint8), [r["subject_id"] for r in records],
                    np.tile(np.arange(per_subject), n_subjects), pd.DataFrame(records))


def test_keeps_a_rounded_share_of_the_group_and_every_other_subject_whole():
    train = toy_train()
    group = members(train.attributes, RareGroup(value="myocardial_infarction"))
    assert group == ["s01", "s04", "s07", "s10"]
    kept, summary = make_rare(train, RareGroup(value="myocardial_infarction", keep=0.5), seed=3)
    assert len(summary["kept"]) == 2 and summary["n_subjects"] == 4
    assert sorted(summary["kept"] + summary["dropped"]) == group and not set(summary["kept"]) & set(summary["dropped"])
    assert set(kept.subject_ids) == set(train.subject_ids) - set(summary["dropped"])
    for sid in set(kept.subject_ids):  # kept subjects keep all their slices, with their own images
        rows = [i for i, s in enumerate(train.subject_ids) if s == sid]
        mine = [i for i, s in enumerate(kept.subject_ids) if s == sid]
        assert np.array_equal(kept.images[mine], train.images[rows])
    assert "s11" in kept.subject_ids  # an unknown health is never the rare group
    line = describe(summary)
    assert line.startswith("health = myocardial_infarction made rare") and "kept 2 of 4" in line


def test_same_seed_same_subjects_and_keep_rounds_half_up():
    train = toy_train()
    rare = RareGroup(value="myocardial_infarction", keep=0.25)
    a, b = make_rare(train, rare, seed=0)[1], make_rare(train, rare, seed=0)[1]
    assert a == b and len(a["kept"]) == 1  # 0.25 * 4 = 1
    assert {tuple(make_rare(train, rare, seed=s)[1]["kept"]) for s in range(20)} == {("s01",), ("s04",), ("s07",),
                                                                                      ("s10",)}
    assert len(make_rare(train, RareGroup(value="healthy", keep=0.5), 0)[1]["kept"]) == 2  # 0.5 * 4
    assert len(make_rare(train, RareGroup(value="healthy", keep=0.375), 0)[1]["kept"]) == 2  # 1.5 rounds up
    assert make_rare(train, RareGroup(value="healthy", keep=1.0), 0)[1]["dropped"] == []


def test_other_keys_use_the_plans_bins():
    train = toy_train()  # bmi 20 + k: s00-s04 are <25, s05-s09 25-30, s10-s11 >30
    _, summary = make_rare(train, RareGroup(key="bmi_group", value=">30", keep=0.5), seed=0)
    assert sorted(summary["kept"] + summary["dropped"]) == ["s10", "s11"] and len(summary["kept"]) == 1


@pytest.mark.parametrize("rare, field, fragment", [
    ({"key": "ethnicity", "value": "x"}, "data.rare.key", "expected one of health, sex, age_group, bmi_group"),
    ({"value": "flu"}, "data.rare.value", "expected one of healthy, heart_failure"),
    ({}, "data.rare.value", "unknown health None"),
    ({"key": "sex", "value": "healthy"}, "data.rare.value", "expected one of female, male"),
    ({"value": "healthy", "keep": 0}, "data.rare.keep", "expected a fraction in (0, 1], got 0"),
    ({"value": "healthy", "keep": 1.5}, "data.rare.keep", "expected a fraction in (0, 1], got 1.5"),
])
def test_bad_settings_are_one_line_errors_naming_the_field(rare, field, fragment):
    with pytest.raises(InputError) as err:
        load_run_config(None, [f"data.rare={rare}"])
    assert field in str(err.value) and fragment in str(err.value) and "\n" not in str(err.value)


def test_a_group_without_training_subjects_or_a_keep_that_keeps_none_is_refused():
    train = toy_train()
    with pytest.raises(InputError, match="data.rare.value: none of the training subjects has health 'heart_failure'; "
                                         "they have healthy, myocardial_infarction, dilated_cardiomyopathy"):
        make_rare(train, RareGroup(value="heart_failure"), seed=0)
    with pytest.raises(InputError, match=r"data.rare.keep: 0.1 of the 4 training subjects .* keeps none; "
                                         r"expected at least 1 \(keep >= 0.125\)"):
        make_rare(train, RareGroup(value="healthy", keep=0.1), seed=0)
