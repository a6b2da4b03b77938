import numpy as np
import pandas as pd
import pytest

from data.attributes import age_group, bmi_group
from data.cohort import LV, MYO, RV
from data.errors import InputError
from scipy import stats

from data.plan_csv import load_plan, save_plan
from data.planner import (KEY_VALUES, PLAN_COLUMNS, PlanTarget, apply_jitter, cell_keys, composition_after,
                          inverse_frequency_weights, plan_rebalancing)
from data.prompts import prompt_from_fields

CELL_KEYS = ["health", "sex", "age_group", "bmi_group"]


def cohort(n=80, seed=0, female_hf=True):
    """Skewed real cohort: heart failure mostly in old, obese men; optionally no woman with heart failure."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        sex = ("female", "male")[int(rng.random() < 0.6)]
        age, bmi = float(rng.uniform(40, 80)), float(rng.uniform(18.5, 40))
        p_hf = 0.1 + 0.5 * (sex == "male") * (age > 60)
        health = "heart_failure" if rng.random() < p_hf and (female_hf or sex == "male") else "healthy"
        rows.append({"subject_id": f"s{i:03d}", "slice_row": i, "sex": sex, "age": round(age, 1),
                     "bmi": round(bmi, 1), "health": health})
    return pd.DataFrame(rows)


def cells(frame):
    return pd.DataFrame({"health": frame["health"], "sex": frame["sex"],
                         "age_group": [age_group(a) for a in frame["age"]],
                         "bmi_group": [bmi_group(b) for b in frame["bmi"]]})


def counts(frame):
    return cells(frame).groupby(CELL_KEYS).size()


def full_grid(health):
    return pd.MultiIndex.from_product([[health], *(KEY_VALUES[k] for k in CELL_KEYS[1:])], names=CELL_KEYS)


def test_equalise_deficit_fills_every_cell_to_the_conditions_largest():
    real = cohort()
    plan = plan_rebalancing(real, PlanTarget(mode="equalise", synthetic_labels="deficit"), seed=1)
    after = counts(pd.concat([real, plan]))
    expected_total = 0
    for health in ("healthy", "heart_failure"):
        before = counts(real).reindex(full_grid(health), fill_value=0)
        now = after.reindex(full_grid(health), fill_value=0)
        assert (now == before.max()).all()  # every one of the 18 cells reaches the largest cell
        expected_total += int((before.max() - before).sum())
    assert len(plan) == expected_total
    # Label independent of the sensitive attributes: the health share is the same in every cell.
    table = composition_after(real, plan)
    for _, share in table.groupby("health")["health_share"]:
        assert np.allclose(share, share.iloc[0])
    assert table["real"].sum() == len(real) and table["synthetic"].sum() == len(plan)


def test_min_count_and_conditions_and_cap():
    real = cohort()
    plan = plan_rebalancing(real, PlanTarget(mode="min_count", min_count=3, conditions=("heart_failure",)), seed=0)
    assert set(plan["health"]) == {"heart_failure"}
    before = counts(real).reindex(full_grid("heart_failure"), fill_value=0)
    added = counts(plan).reindex(full_grid("heart_failure"), fill_value=0)
    assert ((before + added) >= 3).all()
    assert (added == np.maximum(3 - before, 0)).all()  # cells already at 3 get nothing
    capped = plan_rebalancing(real, PlanTarget(mode="min_count", min_count=3, max_total=7, synthetic_labels="deficit"),
                              seed=0)
    assert len(capped) == 7
    full = plan_rebalancing(real, PlanTarget(mode="min_count", min_count=3, synthetic_labels="deficit"), seed=0)
    capped_cells, full_cells = counts(capped), counts(full)
    assert all(capped_cells[c] <= full_cells[c] for c in capped_cells.index)


def test_balanced_gives_every_condition_of_a_cell_the_cells_largest_deficit():
    real = cohort(n=200)
    deficit = plan_rebalancing(real, PlanTarget(synthetic_labels="deficit"), seed=1)
    plan = plan_rebalancing(real, PlanTarget(), seed=1)  # balanced is the default
    others = CELL_KEYS[1:]
    grid = pd.MultiIndex.from_product([("healthy", "heart_failure"), *(KEY_VALUES[k] for k in others)], names=CELL_KEYS)
    needed = counts(deficit).reindex(grid, fill_value=0).unstack("health")  # cells x conditions: each one's deficit
    added = counts(plan).reindex(grid, fill_value=0).unstack("health")
    assert (added["healthy"] == added["heart_failure"]).all()  # P(heart failure | synthetic, cell) = 1/2 everywhere
    assert (added["healthy"] == needed.max(axis=1)).all()  # the least that brings every condition to its goal
    assert len(plan) == 2 * int(needed.max(axis=1).sum()) > len(deficit)
    share = added["heart_failure"] / added.sum(axis=1)
    assert share.dropna().nunique() == 1 and len(share.dropna()) > 0
    before = counts(real).reindex(grid, fill_value=0).unstack("health")
    after = before + added
    for health in ("healthy", "heart_failure"):
        assert (after[health] >= before[health].max()).all()  # every cell still reaches the condition's largest
    # deficit: inside the cells that need heart failure nearly every synthetic sample is heart failure
    deficit_share = (needed["heart_failure"] / needed.sum(axis=1)).dropna()
    assert deficit_share.max() == 1.0 and deficit_share.nunique() > 1


def test_cell_keys_follow_the_rows_of_any_index():
    real = cohort(n=20)
    stacked = pd.concat([real, cohort(n=20, seed=1)])  # labels 0..19 twice, as after concatenating real and a plan
    keyed = cell_keys(stacked, tuple(CELL_KEYS))
    assert list(keyed.index) == list(stacked.index)
    assert (keyed.to_numpy() == cells(stacked).to_numpy()).all()


def test_balanced_cap_shares_out_whole_cells():
    real = cohort(n=200)
    capped = plan_rebalancing(real, PlanTarget(max_total=31), seed=0)
    assert len(capped) == 30  # rounded down to a multiple of the two conditions
    added = counts(capped).unstack("health", fill_value=0)
    assert (added["healthy"] == added["heart_failure"]).all()


def test_masks_same_health_and_sex_drawn_without_replacement_first():
    real = cohort()
    plan = plan_rebalancing(real, PlanTarget(mode="equalise"), seed=2)
    donors = real.set_index("slice_row").loc[plan["mask_row"]]
    assert (donors["subject_id"].to_numpy() == plan["mask_subject_id"].to_numpy()).all()
    assert (donors["health"].to_numpy() == plan["health"].to_numpy()).all()
    assert (donors["sex"].to_numpy() == plan["sex"].to_numpy()).all()
    fresh = plan[plan["jitter"] == 0]
    assert fresh["mask_row"].is_unique  # no mask used twice without jitter
    for (health, sex), group in plan.groupby(["health", "sex"]):
        pool = int(((real["health"] == health) & (real["sex"] == sex)).sum())
        assert (group["jitter"] == 0).sum() == min(pool, len(group))
        assert group["jitter"].is_monotonic_increasing  # reuse only once the pool is used up


def test_falls_back_to_same_health_when_no_donor_of_that_sex():
    real = cohort(female_hf=False)
    plan = plan_rebalancing(real, PlanTarget(mode="equalise", conditions=("heart_failure",)), seed=0)
    women = plan[plan["sex"] == "female"]
    assert len(women) > 0 and (women["mask_match"] == "health").all()
    donor_health = real.set_index("slice_row").loc[women["mask_row"], "health"]
    assert (donor_health == "heart_failure").all()


def test_values_inside_cell_bins_and_prompts():
    real = cohort()
    plan = plan_rebalancing(real, PlanTarget(mode="min_count", min_count=2), seed=3)
    assert plan["sample_id"].is_unique and set(PLAN_COLUMNS) <= set(plan.columns)
    assert plan["age"].between(40, 80).all() and plan["bmi"].between(18.5, 40).all()
    assert plan["age"].nunique() > len(plan) // 2  # drawn per sample, not a bin's fixed representative
    for row in plan.itertuples():
        assert row.prompt == prompt_from_fields(row.sex, row.age, row.bmi, row.health)


def test_deterministic_for_a_seed():
    real = cohort()
    a = plan_rebalancing(real, PlanTarget(), seed=5)
    b = plan_rebalancing(real, PlanTarget(), seed=5)
    c = plan_rebalancing(real, PlanTarget(), seed=6)
    pd.testing.assert_frame_equal(a, b)
    assert not a[["age", "mask_row", "seed"]].equals(c[["age", "mask_row", "seed"]])


def test_keys_the_cohort_lacks():
    real = cohort().assign(sex=None, age=np.nan)  # like ACDC: no sex, no age
    with pytest.raises(InputError, match="no real row has all of"):
        plan_rebalancing(real, PlanTarget())
    plan = plan_rebalancing(real, PlanTarget(keys=("health", "bmi_group"), synthetic_labels="deficit"), seed=0)
    after = cells(pd.concat([real, plan]).assign(sex="female", age=50.0)).groupby(["health", "bmi_group"]).size()
    for health in ("healthy", "heart_failure"):
        assert after[health].nunique() == 1 and len(after[health]) == 3  # 3 BMI groups, equal
    assert plan["sex"].isna().all() and plan["age"].isna().all()  # copied from donors: unknown stays unknown


def test_health_alone_fills_every_condition_to_the_largest_from_its_own_masks():
    # like ACDC with data.rare: no sex/age/BMI, one condition made rare among the training rows
    health = ["healthy"] * 10 + ["dilated_cardiomyopathy"] * 9 + ["myocardial_infarction"] * 3
    real = pd.DataFrame({"subject_id": [f"s{i // 2:02d}" for i in range(len(health))], "slice_row": range(len(health)),
                         "sex": None, "age": np.nan, "bmi": np.nan, "health": health})
    plan = plan_rebalancing(real, PlanTarget(keys=("health",)), seed=0)
    after = pd.concat([real, plan])["health"].value_counts()
    assert (after == 10).all() and len(after) == 3 and len(plan) == 1 + 7
    donors = real.set_index("slice_row").loc[plan["mask_row"], "health"]
    assert (donors.to_numpy() == plan["health"].to_numpy()).all()  # a condition's geometry from its own subjects
    infarcts = plan[plan["health"] == "myocardial_infarction"]
    assert (infarcts["jitter"] == 0).sum() == 3 and (infarcts["jitter"] == 1).sum() == 4  # 3 masks, then reused
    floored = plan_rebalancing(real, PlanTarget(keys=("health",), min_count=12), seed=0)  # a floor above the largest
    assert (pd.concat([real, floored])["health"].value_counts() == 12).all()
    with pytest.raises(InputError, match="min_count"):
        PlanTarget(min_count=-1)


def test_inverse_frequency_weights_give_every_prompt_the_same_mass():
    prompts = ["a"] * 6 + ["b"] * 3 + ["c"]
    p = inverse_frequency_weights(prompts)
    assert np.allclose(p, [1 / 18] * 6 + [1 / 9] * 3 + [1 / 3])  # 1 / (P * count), P = 3 distinct prompts
    assert np.isclose(p.sum(), 1.0)


def test_copies_draw_by_inverse_prompt_frequency_and_keep_prompt_and_mask():
    real = cohort(n=120)
    plan = plan_rebalancing(real, PlanTarget(mode="copies", copies=6000), seed=0)
    assert len(plan) == 6000 and plan["sample_id"].is_unique and (plan["jitter"] == 0).all()
    donors = real.set_index("slice_row").loc[plan["mask_row"]]
    assert (donors["subject_id"].to_numpy() == plan["mask_subject_id"].to_numpy()).all()
    for column in ("sex", "age", "bmi", "health"):  # a copy is its donor: fields, prompt and mask
        assert (donors[column].to_numpy() == plan[column].to_numpy()).all()
    own = [prompt_from_fields(r.sex, r.age, r.bmi, r.health) for r in donors.itertuples()]
    assert list(plan["prompt"]) == own
    # every distinct prompt is drawn equally often in expectation: chi-square against the uniform over prompts
    distinct = sorted(set(prompt_from_fields(r.sex, r.age, r.bmi, r.health) for r in real.itertuples()))
    observed = plan["prompt"].value_counts().reindex(distinct, fill_value=0).to_numpy()
    assert stats.chisquare(observed).pvalue > 1e-3
    frequent = pd.Series(own).map(pd.Series([prompt_from_fields(r.sex, r.age, r.bmi, r.health)
                                             for r in real.itertuples()]).value_counts())
    assert frequent.max() > 1  # the table has repeated prompts, so inverse frequency differs from uniform rows
    uniform_rows = real.assign(prompt=[prompt_from_fields(r.sex, r.age, r.bmi, r.health) for r in real.itertuples()])
    row_expected = uniform_rows["prompt"].value_counts().reindex(distinct).to_numpy() / len(real) * 6000
    assert stats.chisquare(observed, row_expected).pvalue < 1e-6  # a uniform draw over rows is rejected
    only_hf = plan_rebalancing(real, PlanTarget(mode="copies", copies=50, conditions=("heart_failure",)), seed=0)
    assert (only_hf["health"] == "heart_failure").all()


def test_copies_take_the_donors_own_prompt_with_its_position(tmp_path):
    real = cohort(n=10).assign(prompt=lambda f: [prompt_from_fields(r.sex, r.age, r.bmi, r.health, position="basal")
                                                 for r in f.itertuples()])
    plan = plan_rebalancing(real, PlanTarget(mode="copies", copies=20), seed=0)
    assert plan["prompt"].str.endswith("basal slice").all()
    assert len(load_plan(save_plan(plan, tmp_path / "plan.csv"))) == 20  # a copy passes the plan's checks


def test_target_validation():
    with pytest.raises(InputError, match="copies"):
        PlanTarget(mode="copies")
    with pytest.raises(InputError, match="synthetic_labels"):
        PlanTarget(synthetic_labels="matched")
    with pytest.raises(InputError, match="mode"):
        PlanTarget(mode="balance")
    with pytest.raises(InputError, match="min_count"):
        PlanTarget(mode="min_count", min_count=0)
    with pytest.raises(InputError, match="flu"):
        PlanTarget(conditions=("flu",))
    with pytest.raises(InputError, match="health"):
        PlanTarget(keys=("sex",))
    with pytest.raises(InputError, match="no real mask with health 'atrial_fibrillation'"):
        plan_rebalancing(cohort(), PlanTarget(mode="min_count", min_count=1, conditions=("atrial_fibrillation",)))


def ring_mask(size=32):
    x, y = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    r = np.hypot(x - 15.5, y - 14.5)
    m = np.zeros((size, size), np.uint8)
    m[np.hypot(x - 15.5, y - 5.0) < 5] = RV
    m[r < 8] = MYO
    m[r < 5] = LV
    return np.stack([m, m])


def test_apply_jitter_is_small_rigid_and_deterministic():
    mask = ring_mask()
    moved = [apply_jitter(mask, np.random.default_rng(s)) for s in range(5)]
    assert all(m.shape == mask.shape and m.dtype == mask.dtype for m in moved)
    assert any((m != mask).any() for m in moved)
    for m in moved:
        assert (m[0] == m[1]).all()  # ED and ES move together
        for label in (LV, MYO, RV):
            assert abs(int((m == label).sum()) - int((mask == label).sum())) <= 0.15 * (mask == label).sum()
        lv_shift = np.argwhere(m[0] == LV).mean(0) - np.argwhere(mask[0] == LV).mean(0)
        assert np.abs(lv_shift).max() <= 3.0  # a few pixels at most
    assert (apply_jitter(mask, np.random.default_rng(1)) == moved[1]).all()


def test_a_donor_slice_position_goes_into_the_prompt_with_its_mask():
    health = ["healthy"] * 6 + ["myocardial_infarction"] * 3
    positions = ["basal", "mid", "apical"] * 3
    real = pd.DataFrame({"subject_id": [f"s{i // 3}" for i in range(9)], "slice_row": range(9), "sex": None,
                         "age": np.nan, "bmi": 27.0, "health": health,
                         "prompt": [prompt_from_fields(bmi=27.0, health=h, position=p) for h, p in zip(health, positions)]})
    plan = plan_rebalancing(real, PlanTarget(keys=("health",)), seed=0)
    assert len(plan) == 3
    for row in plan.itertuples():
        donor = real.set_index("slice_row").loc[row.mask_row]
        assert row.prompt == f"overweight BMI, myocardial infarction, {positions[row.mask_row]} slice" == donor["prompt"]
    no_prompt = plan_rebalancing(real.drop(columns="prompt"), PlanTarget(keys=("health",)), seed=0)
    assert not no_prompt["prompt"].str.contains("slice").any()
