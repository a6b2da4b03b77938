"""data/plan_csv.py: a plan survives the CSV round trip, and a broken row is refused naming its line and field."""
import numpy as np
import pytest

from data.errors import InputError
from data.plan_csv import load_plan, save_plan
from data.planner import PlanTarget, plan_rebalancing
from tests.test_planner import cohort


def test_save_load_roundtrip_and_errors(tmp_path):
    plan = plan_rebalancing(cohort(), PlanTarget(mode="min_count", min_count=1, max_total=6), seed=0)
    path = save_plan(plan, tmp_path / "plan.csv")
    loaded = load_plan(path)
    assert list(loaded["sample_id"]) == list(plan["sample_id"])
    assert list(loaded["mask_row"]) == list(plan["mask_row"]) and list(loaded["seed"]) == list(plan["seed"])
    assert np.allclose(loaded["age"], plan["age"])
    bad_cases = {"health": ("flu", r"line 3 \(sample syn-000001\): health.*heart_failure"),
                 "jitter": ("3", r"line 3.*jitter"), "sample_id": ("syn-000000", "duplicate"),
                 "mask_row": ("-1", "mask_row")}
    for field, (value, message) in bad_cases.items():
        broken = plan.copy()
        broken[field] = broken[field].astype(object)
        broken.loc[1, field] = value
        save_plan(broken, tmp_path / "bad.csv")
        with pytest.raises(InputError, match=message):
            load_plan(tmp_path / "bad.csv")
    save_plan(plan.drop(columns=["seed"]), tmp_path / "bad.csv")
    with pytest.raises(InputError, match="missing column.*seed"):
        load_plan(tmp_path / "bad.csv")
