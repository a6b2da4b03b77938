import json

import numpy as np
import pandas as pd
import pytest

from data.errors import InputError
from data.prompts import prompt_from_fields
from data.slices import SliceSet
from evaluation.training_set import TrainingSetConfig, cell_names, evaluate_training_set, write_training_set

FAST = TrainingSetConfig(epochs=1, discriminator_epochs=1, folds=2, fid_n=40, fid_repeats=2, matrix_n=20,
                         min_group=4, n_boot=20)


def _slices(n: int, prefix: str, rng: np.random.Generator, acdc: bool) -> SliceSet:
    rows = []
    for i in range(n):
        sex, age = (None, None) if acdc else (str(rng.choice(["female", "male"])), float(rng.uniform(40, 80)))
        bmi, health = float(rng.uniform(19, 38)), str(rng.choice(["healthy", "heart_failure"]))
        rows.append({"subject_id": f"{prefix}{i}", "sex": sex, "age": age, "bmi": bmi, "health": health,
                     "prompt": prompt_from_fields(sex, age, bmi, health)})
    table = pd.DataFrame(rows)
    shift = np.where(table["health"] == "heart_failure", 0.5, -0.5)[:, None, None, None]
    images = (rng.uniform(-0.3, 0.3, (n, 2, 32, 32)) + shift).astype(np.float32)
    return SliceSet(images, np.zeros((n, 2, 32, 32), np.uint8), list(table["subject_id"]), np.zeros(n), table)


def _run(acdc: bool, tmp_path):
    rng = np.random.default_rng(0)
    train, test, syn = (_slices(n, p, rng, acdc) for n, p in ((48, "r"), (24, "t"), (40, "s")))
    # on the phantom a fresh cohort is the FIDs' real side: 100 subjects, two halves of 50 >= n = 40
    pool = None if acdc else (_slices(100, "f", rng, acdc), "fresh test cohort")
    donors = rng.integers(0, len(train), len(syn))
    syn.images[:8] = train.images[donors[:8]]  # eight samples copy their donor
    plan = syn.attributes.rename(columns={"subject_id": "sample_id"}).assign(
        mask_subject_id=[train.subject_ids[d] for d in donors], mask_row=donors)
    keys = ("health", "bmi_group") if acdc else ("health", "sex", "age_group", "bmi_group")
    result = evaluate_training_set(train, test, syn, plan, FAST, keys, ("heart_failure",), reference=pool)
    write_training_set(result, tmp_path / "t.json", tmp_path / "t.md")
    return result, json.loads((tmp_path / "t.json").read_text()), (tmp_path / "t.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("acdc", [False, True])
def test_phantom_and_acdc_runs_give_every_part(acdc, tmp_path):
    result, stored, markdown = _run(acdc, tmp_path)
    assert set(stored) >= {"attribute_recovery", "memorisation", "discriminator", "fid_equal_n", "fid_matrix"}
    heads = set(result["attribute_recovery"]["heads"])
    assert heads == ({"bmi_category", "health"} if acdc else {"sex", "age_group", "bmi_category", "health"})
    assert result["memorisation"]["pixels"]["overall"]["flagged_donor"] >= 8 / 40  # the copies are flagged
    drawn = result["fid_equal_n"]["with_replacement"]
    if acdc:  # the held-out test set: 24 images < n = 40, said so
        assert drawn["real"] and drawn["bound"] and result["fid_reference"]["images"] == 24
    else:
        assert drawn == {"real": False, "fake": False, "bound": False}
        assert result["fid_reference"] == {"name": "fresh test cohort", "images": 100, "subjects": 100}
        assert "fresh test cohort, 100 images of 100 subjects" in markdown
        assert sum(result["fid_matrix"]["sex"]["counts"][v]["real"] for v in ("female", "male")) == 100
    assert ("skipped" in result["fid_matrix"]["sex"]) == acdc
    assert "Cross-subgroup FID" in markdown and "discriminator" in markdown


def test_a_reference_pool_sharing_a_training_subject_is_refused():
    rng = np.random.default_rng(1)
    train, syn = _slices(12, "r", rng, False), _slices(6, "s", rng, False)
    plan = syn.attributes.rename(columns={"subject_id": "sample_id"}).assign(mask_subject_id="r0", mask_row=0)
    leaky = train.select(np.arange(4))  # real training images, the plan's donors among them
    with pytest.raises(InputError, match="shares 4 subject"):
        evaluate_training_set(train, _slices(6, "t", rng, False), syn, plan, FAST, ("health",), ("heart_failure",),
                              reference=(leaky, "leaky pool"))


def test_cell_names_follow_the_plan_keys():
    table = pd.DataFrame({"sex": ["male", None], "age": [70.0, 50.0], "bmi": [24.0, 31.0],
                          "health": ["healthy", "heart_failure"]})
    assert cell_names(table, ("health", "sex", "bmi_group")) == ["healthy/male/<25", "heart_failure/?/>30"]
    assert cell_names(table, ()) == ["all", "all"]
