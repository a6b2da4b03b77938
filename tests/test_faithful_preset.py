"""configs/tiny-faithful.yaml (the method's own protocol on the tiny generator) and the experiment stage's
prevalence control."""
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.errors import InputError
from data.slices import SliceSet
from run.config import load_run_config
from run.downstream import at_prevalence

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TRAINED = ("data", "vae", "vae_train", "text", "unet", "diffusion", "ldm_train", "controlnet", "controlnet_train")


def test_faithful_preset_loads_and_shares_every_trained_section_with_tiny():
    faithful, tiny = load_run_config(CONFIGS / "tiny-faithful.yaml"), load_run_config(CONFIGS / "tiny.yaml")
    for section in TRAINED:  # a trained tiny run's checkpoints are reused, only plan and experiment differ
        assert asdict(getattr(faithful, section)) == asdict(getattr(tiny, section)), section
    fs = faithful.sample  # the method's sampler; tiny samples faster at equal quality (BENCHMARKS.md)
    assert (fs.sampler, fs.steps, fs.eta, fs.guidance, fs.control_scale, fs.guidance_interval) == ("ddim", 20, 0.0, 4.0, 1.0, None)
    assert (tiny.sample.guidance, tiny.sample.control_scale) == (fs.guidance, fs.control_scale)
    assert faithful.plan.mode == "copies" and faithful.plan.copies > 0
    exp = faithful.experiment
    assert (exp.train_prevalence, exp.val_prevalence, exp.test_prevalence) == (0.25, 0.10, 0.01)
    assert "reweighted" in exp.arms and len(exp.seeds) == 8
    with pytest.raises(InputError, match="experiment.test_prevalence"):
        load_run_config(CONFIGS / "tiny-faithful.yaml", ["experiment.test_prevalence=0"])


def slices(n_hf, n_healthy, rows=2):
    health = ["heart_failure"] * n_hf + ["healthy"] * n_healthy
    n = rows * len(health)
    attributes = pd.DataFrame({"subject_id": [f"s{i // rows:03d}" for i in range(n)], "sex": "female", "age": 50.0,
                               "bmi": 24.0, "health": [health[i // rows] for i in range(n)], "prompt": ""})
    return SliceSet(np.zeros((n, 2, 4, 4)), np.zeros((n, 2, 4, 4)), list(attributes["subject_id"]), np.zeros(n),
                    attributes)


def test_at_prevalence_keeps_whole_subjects_at_the_share_of_the_positive_condition():
    real = slices(40, 60)
    assert at_prevalence(real, None, ("heart_failure",), 0, "x") is real
    kept = at_prevalence(real, 0.25, ("heart_failure",), 0, "experiment.train_prevalence")
    subjects = kept.attributes.drop_duplicates("subject_id")
    assert (subjects["health"] == "heart_failure").sum() == 20 and len(subjects) == 80 and len(kept) == 160
    flipped = at_prevalence(real, 0.25, ("healthy",), 0, "x")  # positive is what experiment.positive says
    counts = flipped.attributes.drop_duplicates("subject_id")["health"].value_counts()
    assert (counts["healthy"], counts["heart_failure"]) == (13, 40)  # all 40 negatives, round(40 / 3) positives
