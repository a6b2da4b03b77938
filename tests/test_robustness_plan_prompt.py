"""Issue 18, class 6: a plan row's fields and its prompt are cross-checked when the plan is read
(data/plan_csv.py:prompt_disagreement in load_plan): the image is made from the prompt and labelled with the
fields, so they must say the same thing (sex, age decade, BMI category, condition: in both or in neither)."""
import pytest

from data.errors import InputError
from data.plan_csv import load_plan, prompt_disagreement
from tests.test_robustness import PLAN_HEADER, PROMPT

ROW = {"sex": "female", "age": "47", "bmi": "22", "health": "heart_failure", "prompt": PROMPT}


def _plan(tmp_path, **changes):
    row = {**ROW, **changes}
    text = (f'{PLAN_HEADER}\nsyn-1,{row["sex"]},{row["age"]},{row["bmi"]},{row["health"]},"{row["prompt"]}",,,1,0,'
            "mask.nii.gz\n")
    (tmp_path / "plan.csv").write_text(text)
    return tmp_path / "plan.csv"


MISMATCHES = {  # row changes -> fragments of the one error line
    "the issue's row": ({"sex": "male", "age": "75", "health": "healthy"}, ["sex 'female'", "sex column gives 'male'"]),
    "sex": ({"sex": "male"}, ["prompt says sex 'female'", "'male'"]),
    "age decade": ({"age": "52"}, ["age decade 40", "age column gives 50 (52.0)"]),
    "BMI category": ({"bmi": "31"}, ["bmi category 'normal'", "'obese'"]),
    "condition": ({"health": "healthy"}, ["health 'heart_failure'", "health column gives 'healthy'"]),
    "field not in the prompt": ({"prompt": "Female, age in 40s, heart failure"},
                                ["bmi category nothing", "bmi column gives 'normal'"]),
    "prompt part with no field": ({"sex": ""}, ["sex 'female'", "sex column gives nothing"]),
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_a_row_whose_prompt_says_something_else_is_refused(tmp_path, case):
    changes, fragments = MISMATCHES[case]
    with pytest.raises(InputError) as caught:
        load_plan(_plan(tmp_path, **changes))
    message = str(caught.value)
    for fragment in ["plan.csv: line 2 (sample syn-1): prompt", *fragments, "expected a prompt stating"]:
        assert fragment in message, message


@pytest.mark.parametrize("prompt", ["heart failure, normal BMI, age in 40s, Female", "female, AGE IN 40s, normal bmi, "
                                    "heart-failure"])
def test_the_same_statement_in_another_spelling_is_accepted(tmp_path, prompt):
    assert load_plan(_plan(tmp_path, prompt=prompt))["sex"][0] == "female"


def test_bins_not_values_are_compared():
    assert prompt_disagreement({"sex": "female", "age": 40.0, "bmi": 24.9, "health": "heart_failure"}, PROMPT) is None
    assert prompt_disagreement({"sex": "female", "age": 49.9, "bmi": 18.5, "health": "heart_failure"}, PROMPT) is None
    assert "age decade" in prompt_disagreement({"sex": "female", "age": 50.0, "bmi": 22.0, "health": "heart_failure"},
                                               PROMPT)
    assert prompt_disagreement({"sex": None, "age": None, "bmi": None, "health": None}, "") is None
