import numpy as np
import pandas as pd
import pytest
import torch

from data.errors import InputError
from data.slices import SliceSet, attributes_frame
from evaluation.attributes import attribute_accuracy, attribute_labels, predict, train_attribute_classifiers
from tests.test_features import toy_slices


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    train, test = toy_slices(24, 2, seed=0), toy_slices(12, 2, seed=1, prefix="t")
    models = train_attribute_classifiers(train, ("sex", "health", "age_decade"), epochs=4, batch_size=8, seed=0)
    return train, test, models


def test_labels_come_from_numbers_for_patients_and_from_the_prompt_for_generated_images():
    frame = attributes_frame([
        {"subject_id": "a", "sex": "female", "age": 47.0, "bmi": 31.0, "health": "healthy",
         "prompt": "Female, age in 40s, obese BMI, healthy"},
        {"subject_id": "b", "sex": None, "age": None, "bmi": None, "health": None,
         "prompt": "Male, age in 50s, normal BMI, heart failure"},
        {"subject_id": "c", "sex": None, "age": None, "bmi": None, "health": None, "prompt": "age in 70s, apical slice"},
    ])
    labels = attribute_labels(frame)
    assert labels.iloc[0].to_dict() == {"sex": "female", "age_decade": "40s", "age_group": "<55",
                                        "bmi_category": "obese", "health": "healthy", "slice_position": None}
    # the 50s straddle the 55 cut, so the prompt does not fix the age group; the 70s lie wholly in 65+
    assert labels.iloc[1].to_dict() == {"sex": "male", "age_decade": "50s", "age_group": None,
                                        "bmi_category": "normal", "health": "heart_failure", "slice_position": None}
    assert labels.iloc[2]["age_group"] == "65+" and labels.iloc[2]["sex"] is None
    assert labels.iloc[2]["slice_position"] == "apical"  # a slice's position is only ever in the prompt
    # prompt only: a patient row's exact age (47) is not used, the prompt's decade is
    assert attribute_labels(frame, use_numbers=False).iloc[0]["age_group"] == "<55"


def test_classifiers_beat_chance_on_labelled_real_test_images(trained):
    _, test, models = trained
    acc = attribute_accuracy(models, test.images, test.attributes)
    for name in ("sex", "health"):
        assert models[name].vocab == tuple(sorted(set(test.attributes[name])))
        assert acc[name]["n"] == len(test)
        assert acc[name]["accuracy"] > acc[name]["chance"] + 0.2, (name, acc[name])


def test_multiclass_attribute_gets_one_output_per_class(trained):
    _, test, models = trained
    clf = models["age_decade"]
    assert len(clf.vocab) > 2 and clf.model.head.out_features == len(clf.vocab)
    pred = predict(clf.model, test.images)
    assert pred.shape == (len(test),) and pred.min() >= 0 and pred.max() < len(clf.vocab)


def test_generated_images_are_scored_against_their_prompt(trained):
    _, test, models = trained
    # the same images prompted with the opposite sex: every right answer becomes a wrong one
    flipped = test.attributes.assign(sex=None, age=np.nan, bmi=np.nan, health=None)
    flipped["prompt"] = [p.replace("Female", "X").replace("Male", "Female").replace("X", "Male") for p in test.prompts]
    true = attribute_accuracy(models, test.images, test.attributes, prompted=True)["sex"]["accuracy"]
    wrong = attribute_accuracy(models, test.images, flipped, prompted=True)["sex"]["accuracy"]
    assert wrong == pytest.approx(1.0 - true)


def test_cohort_without_sex_age_bmi_skips_them_and_says_why():
    data = toy_slices(6, 2, seed=3)
    frame = data.attributes.assign(sex=None, age=np.nan, bmi=np.nan)
    frame["prompt"] = [p.split(", ")[-1] for p in data.prompts]  # ACDC prompts: the condition alone
    acdc = SliceSet(data.images, data.masks, data.subject_ids, data.slice_index, frame)
    models = train_attribute_classifiers(acdc, ("sex", "age_decade", "bmi_category", "health"), epochs=1)
    for name in ("sex", "age_decade", "bmi_category"):
        assert models[name].model is None and "carries no" in models[name].skipped
    assert models["health"].skipped is None and models["health"].n_train == len(acdc)
    acc = attribute_accuracy(models, acdc.images, acdc.attributes)
    assert acc["sex"] == {"skipped": models["sex"].skipped} and 0.0 <= acc["health"]["accuracy"] <= 1.0


def test_single_class_and_unseen_labels_are_reported_not_scored():
    data = toy_slices(4, 1, seed=4)
    healthy = data.select(np.array(data.attributes["health"] == "healthy"))
    models = train_attribute_classifiers(healthy, ("health", "sex"), epochs=1)
    assert "only one health class" in models["health"].skipped
    frame = pd.DataFrame({"subject_id": ["g0", "g1"], "sex": None, "age": np.nan, "bmi": np.nan, "health": None,
                          "prompt": ["Female, healthy", "heart failure"]})
    acc = attribute_accuracy(models, data.images[:2], frame, prompted=True)
    assert acc["sex"]["n"] == 1 and acc["sex"]["n_unlabelled"] == 1


def test_unknown_attribute_is_an_input_error():
    with pytest.raises(InputError, match="unknown attribute"):
        train_attribute_classifiers(toy_slices(2, 1), ("eye_colour",), epochs=1)
