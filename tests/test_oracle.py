"""Tests for data/oracle.py: extra real phantom subjects with the requested attributes, from a stream of their own."""
import dataclasses

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from data.oracle import FIRST_ORACLE_EID, oracle_slices
from data.preprocess import PreprocessConfig
from data.attributes import Attributes
from data.phantom import render_subject
from data.synthetic import _subject_rng
from run.config import RunConfig
from run.downstream import oracle_subjects

WANTED = pd.DataFrame({"sex": ["female", "male", "female"], "age": [45.3, 71.0, 50.0], "bmi": [22.0, 33.1, 24.0],
                       "health": ["heart_failure", "healthy", "heart_failure"]})
PRE = PreprocessConfig(size=32, crop_mm=128.0)


@pytest.mark.slow
def test_oracle_draws_the_requested_cells_one_slice_each_reproducibly(tmp_path):
    slices = oracle_slices(tmp_path / "o", WANTED, 0, PRE, shape=(48, 48, 8))
    assert len(slices) == len(WANTED) and len(set(slices.subject_ids)) == len(WANTED)
    attrs = slices.attributes
    assert list(attrs["sex"]) == list(WANTED["sex"]) and list(attrs["health"]) == list(WANTED["health"])
    np.testing.assert_allclose(attrs["age"], WANTED["age"], atol=0.05)
    np.testing.assert_allclose(attrs["bmi"], WANTED["bmi"], atol=0.05)
    assert [int(s) for s in slices.subject_ids] == list(range(FIRST_ORACLE_EID, FIRST_ORACLE_EID + 3))
    again = oracle_slices(tmp_path / "again", WANTED, 0, PRE, shape=(48, 48, 8))
    assert np.array_equal(slices.images, again.images) and np.array_equal(slices.masks, again.masks)
    other = oracle_slices(tmp_path / "other", WANTED, 1, PRE, shape=(48, 48, 8))
    assert not np.array_equal(slices.images, other.images)
    # subject 0 of the training cohort with the same seed and attributes renders from another stream
    first = WANTED.iloc[0]
    cohort_twin = render_subject(Attributes(sex=first.sex, age=first.age, bmi=first.bmi, health=first.health),
                                 _subject_rng(0, 0, 1), (48, 48, 8))["sa_ED"]
    drawn = nib.load(tmp_path / "o" / str(FIRST_ORACLE_EID) / "sa_ED.nii.gz").get_fdata()
    assert drawn.shape == cohort_twin.shape and not np.array_equal(drawn, cohort_twin)


def test_oracle_subjects_only_on_the_phantom(tmp_path):
    cfg = RunConfig()
    plan = WANTED.assign(sample_id=["a", "b", "c"])
    real = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(tmp_path)))
    assert oracle_subjects(real, plan, tmp_path) is None  # a real cohort: nothing can be drawn
    assert oracle_subjects(cfg, plan.iloc[:0], tmp_path) is None
    off = dataclasses.replace(cfg, experiment=dataclasses.replace(cfg.experiment, arms=("real",)))
    assert oracle_subjects(off, plan, tmp_path) is None
