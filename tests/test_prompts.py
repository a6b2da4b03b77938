import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.attributes import (AGE_RANGE, BMI_CATEGORIES, BMI_RANGE, HEALTH_CONDITIONS, SEXES, Attributes, age_decade,
                             bmi_category)
from data.errors import InputError
from data.prompts import ParsedPrompt, attributes_to_prompt, prompt_from_fields, prompt_to_attributes

# one BMI value inside each category, so a ParsedPrompt can be written back through attributes_to_prompt
BMI_IN = {category: next(b / 2 for b in range(20, 120) if bmi_category(b / 2) == category) for category in BMI_CATEGORIES}


def parsed_to_prompt(parsed: ParsedPrompt) -> str:
    age = None if parsed.age_decade is None else parsed.age_decade + 5.0
    bmi = None if parsed.bmi_category is None else BMI_IN[parsed.bmi_category]
    return attributes_to_prompt(Attributes(sex=parsed.sex, age=age, bmi=bmi, health=parsed.health))


def test_method_example():
    attrs = Attributes(sex="female", age=47.0, bmi=22.0, health="heart_failure")
    assert attributes_to_prompt(attrs) == "Female, age in 40s, normal BMI, heart failure"


def test_missing_fields_are_omitted_and_empty_is_unconditional():
    assert attributes_to_prompt(Attributes()) == ""
    assert attributes_to_prompt(Attributes(age=63.0, health="myocardial_infarction")) == "age in 60s, myocardial infarction"
    assert attributes_to_prompt(Attributes(sex="male", bmi=31.0)) == "Male, obese BMI"
    assert prompt_to_attributes("") == ParsedPrompt()


def test_round_trip_exhaustive_over_vocabulary_and_missing():
    seen = set()
    for sex, decade, bmi, health in itertools.product((None, *SEXES), (None, *range(20, 90, 10)),
                                                      (None, *BMI_CATEGORIES), (None, *HEALTH_CONDITIONS)):
        parsed = ParsedPrompt(sex, decade, bmi, health)
        prompt = parsed_to_prompt(parsed)
        assert prompt_to_attributes(prompt) == parsed
        assert parsed_to_prompt(prompt_to_attributes(prompt)) == prompt
        seen.add(prompt)
    assert len(seen) == 3 * 8 * 5 * 9  # distinct combinations give distinct prompts


def test_parsing_is_case_and_order_insensitive():
    parsed = prompt_to_attributes("heart failure,  NORMAL bmi , age in 40s, female")
    assert parsed == ParsedPrompt("female", 40, "normal", "heart_failure")


@pytest.mark.parametrize("prompt, offending", [
    ("Female, age in 40s, chubby BMI", "chubby BMI"),
    ("Alien, healthy", "Alien"),
    ("Female, age in 45s", "age in 45s"),
    ("Female, age in 130s", "age in 130s"),
    ("Female, cold", "cold"),
])
def test_unknown_parts_name_the_part_and_vocabulary(prompt, offending):
    with pytest.raises(InputError) as err:
        prompt_to_attributes(prompt)
    assert offending in str(err.value)
    if "age in" not in offending:
        assert "heart failure" in str(err.value) and "overweight" in str(err.value)


@pytest.mark.parametrize("prompt", ["Female, Male", "healthy, heart failure", "Female,, healthy"])
def test_repeated_or_empty_parts_are_rejected(prompt):
    with pytest.raises(InputError):
        prompt_to_attributes(prompt)


def test_prompt_from_fields_validates():
    assert prompt_from_fields(sex="F", age=52, bmi=27.5, health="Heart failure") == \
        "Female, age in 50s, overweight BMI, heart failure"
    assert prompt_from_fields() == ""
    with pytest.raises(InputError, match="age"):
        prompt_from_fields(age=-3)
    with pytest.raises(InputError, match="health"):
        prompt_from_fields(health="flu")


@settings(max_examples=200, deadline=None)
@given(sex=st.sampled_from((None, *SEXES)),
       age=st.one_of(st.none(), st.floats(*AGE_RANGE)),
       bmi=st.one_of(st.none(), st.floats(*BMI_RANGE)),
       health=st.sampled_from((None, *HEALTH_CONDITIONS)))
def test_attributes_prompt_attributes_recovers_bins(sex, age, bmi, health):
    attrs = Attributes(sex, age, bmi, health)
    parsed = prompt_to_attributes(attributes_to_prompt(attrs))
    assert parsed == ParsedPrompt(sex, age_decade(age), bmi_category(bmi), health)


def test_slice_position_closes_the_prompt_and_parses_back():
    attrs = Attributes(bmi=27.0, health="dilated_cardiomyopathy")
    prompt = attributes_to_prompt(attrs, "basal")
    assert prompt == "overweight BMI, dilated cardiomyopathy, basal slice"
    assert prompt_to_attributes(prompt) == ParsedPrompt(None, None, "overweight", "dilated_cardiomyopathy", "basal")
    assert prompt_from_fields(bmi=17.0, health="healthy", position="Apical") == "underweight BMI, healthy, apical slice"
    assert prompt_to_attributes("MID SLICE").position == "mid"
    for bad in ("top slice", "basal"):
        with pytest.raises(InputError, match="unknown part"):
            prompt_to_attributes(f"healthy, {bad}")
    with pytest.raises(InputError, match="position: unknown slice position 'top'"):
        prompt_from_fields(health="healthy", position="top")
