"""Issue 18, class 5: a prompt that validates as one thing conditions as that thing. One canonicaliser
(data/prompts.py:canonical_prompt) gives every accepted spelling one text; sample.py and the sample writer
(run/samples.py:run_requests, behind sample.py and the stages) pass the model and the sidecars only that text."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data.attributes import Attributes
from data.errors import InputError
from data.prompts import attributes_to_prompt, canonical_prompt
from ddpm.sampling import SampleSettings
from ddpm.tokenizer import UNK_ID, Tokenizer
from run.config import RunConfig
from run.samples import SampleRequest, run_requests

PLAIN = "Female, age in 40s, normal BMI, heart failure"
SPELLINGS = [
    "Female, age in ４０s, normal BMI, heart failure",  # full-width digits
    "Female, age in ٤٠s, normal BMI, heart failure",  # Arabic-Indic digits
    "Female, age in 040s, normal BMI, heart failure",
    "heart failure, normal BMI, age in 40s, Female",  # reordered parts
    "Female, age in 40s, normal BMI, heart-failure",
    "FEMALE,age in 40s,Normal bmi,Heart   Failure",
    "  female ,  age  in 40s , normal BMI , heart_failure  ",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_accepted_spelling_becomes_the_one_canonical_text(spelling):
    assert canonical_prompt(spelling) == PLAIN


def test_the_canonical_text_is_what_training_prompts_look_like_and_tokenizes_without_unknowns():
    tokenizer = Tokenizer()
    for sex in ("female", "male", None):
        for age in (42.0, 77.0, None):
            for health in ("healthy", "heart_failure", None):
                text = attributes_to_prompt(Attributes(sex=sex, age=age, bmi=23.0, health=health))
                assert canonical_prompt(text) == text  # a fixed point: training prompts are canonical already
    for spelling in SPELLINGS:
        tokens = tokenizer.encode(canonical_prompt(spelling))
        assert torch.equal(tokens, tokenizer.encode(PLAIN)) and UNK_ID not in tokens.tolist()


@pytest.mark.parametrize("prompt, fragment", [
    ("Female, age in 45s", "not a decade"),
    ("Female, age in 40", "unknown part"),
    ("Female, heart failure!", "unknown part"),
    ("Female, female", "given twice"),
])
def test_what_does_not_validate_is_refused(prompt, fragment):
    with pytest.raises(InputError, match=fragment):
        canonical_prompt(prompt)


def _fake_pipe(seen: list):
    def generate(prompts, masks, seed, **_):
        seen.extend(prompts)
        return np.zeros((len(prompts), 2, 8, 8), np.float32)
    cfg = RunConfig()
    cfg.data.preprocess.size = 8
    return SimpleNamespace(cfg=cfg, device=torch.device("cpu"), generate=generate)


def test_the_model_and_the_sidecar_get_the_canonical_text(tmp_path):
    seen = []
    requests = [SampleRequest(f"s{i}", text, i) for i, text in enumerate(SPELLINGS[:3])]
    run_requests(_fake_pipe(seen), requests, tmp_path, SampleSettings(batch_size=2), {}, progress=False)
    assert seen == [PLAIN] * 3
    assert {json.loads((tmp_path / f"s{i}.json").read_text())["prompt"] for i in range(3)} == {PLAIN}


def test_the_writer_refuses_a_prompt_that_does_not_validate_naming_the_sample(tmp_path):
    with pytest.raises(InputError, match="sample 's1': prompt: unknown part"):
        run_requests(_fake_pipe([]), [SampleRequest("s0", PLAIN, 0), SampleRequest("s1", "Female, 40s", 1)], tmp_path,
                     SampleSettings(), {}, progress=False)
    assert list(tmp_path.iterdir()) == []
