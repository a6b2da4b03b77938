"""Tests for classify/train.py: metagroups, balanced sampling, subject splits, determinism, learning a toy task."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from classify.fairness import balanced_accuracy
from classify.resnet import ClassifierConfig
from classify.train import (ClassifierTrainConfig, augment_batch, metagroup_keys, planned_steps, predict_proba,
                            sample_weights, steps_per_epoch, train_classifier, validation_split)
from data.errors import InputError

TINY = ClassifierConfig(widths=(4, 8), blocks_per_stage=(1, 1))


def _groups(n, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"sex": rng.choice(["female", "male"], n), "age": rng.uniform(30, 80, n),
                         "bmi": rng.uniform(18, 35, n), "subject_id": np.arange(n)})


def test_metagroup_keys_combine_label_sex_age_bmi_with_unknowns():
    df = pd.DataFrame({"label": [1, 0], "sex": ["F", None], "age": [47.0, None], "bmi": [31.0, np.nan]})
    assert list(metagroup_keys(df)) == ["1 | female | <55 | >30", "0 | unknown | unknown | unknown"]
    with pytest.raises(InputError, match="label"):
        metagroup_keys(df.drop(columns="label"))
    # a cohort grouped by health (ACDC): reweighting then draws every health group equally often
    acdc = pd.DataFrame({"label": [1, 0], "health": ["myocardial_infarction", None], "sex": [None, None]})
    assert list(metagroup_keys(acdc, ("health",))) == ["1 | myocardial_infarction", "0 | unknown"]


def test_sample_weights_equalise_expected_metagroup_counts():
    keys = np.array(["a"] * 70 + ["b"] * 25 + ["c"] * 5)
    weights = sample_weights(keys)
    totals = pd.Series(weights).groupby(keys).sum()
    np.testing.assert_allclose(totals.to_numpy(), 1.0)  # each group draws with probability 1/3
    drawn = keys[list(WeightedRandomSampler(weights, 30_000, generator=torch.Generator().manual_seed(0)))]
    counts = pd.Series(drawn).value_counts()
    np.testing.assert_allclose(counts.to_numpy(), 10_000, rtol=0.04)  # binomial sd ~ 82, 4% = 400


def test_augment_keeps_shape_range_and_is_seeded():
    x = torch.linspace(-1, 1, 2 * 8 * 8).reshape(1, 2, 8, 8).repeat(4, 1, 1, 1)
    a = augment_batch(x, torch.Generator().manual_seed(0))
    b = augment_batch(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.abs().max() < 1.2  # gamma keeps [-1, 1]; only the small noise goes past it


def _random_data(n=24, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, 2, size, size)).astype(np.float32), rng.integers(0, 2, n)


def test_training_is_deterministic_for_a_seed_and_leaves_global_rng_alone():
    images, labels = _random_data()
    cfg = ClassifierTrainConfig(epochs=2, batch_size=8, lr=1e-3, balanced_sampling=True, seed=3)
    state = torch.get_rng_state()
    first, hist = train_classifier(images, labels, _groups(24), cfg, model_cfg=TINY)
    assert torch.equal(torch.get_rng_state(), state)
    second, _ = train_classifier(images, labels, _groups(24), cfg, model_cfg=TINY)
    other, _ = train_classifier(images, labels, _groups(24), ClassifierTrainConfig(**{**cfg.__dict__, "seed": 4}), model_cfg=TINY)
    for (name, a), b, c in zip(first.state_dict().items(), second.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(first.state_dict().values(), other.state_dict().values()))
    assert len(hist["train_loss"]) == 2 and hist["best_epoch"] in (0, 1)


def test_val_prevalence_subsamples_the_held_out_subjects():
    images, _ = _random_data(n=60)
    labels = np.array([1] * 30 + [0] * 30)
    cfg = ClassifierTrainConfig(epochs=1, batch_size=8, val_fraction=0.5, seed=0)
    _, full = train_classifier(images, labels, _groups(60), cfg, model_cfg=TINY)
    assert (full["n_val"], full["n_val_positive"]) == (30, 15)  # stratified half
    _, low = train_classifier(images, labels, _groups(60), ClassifierTrainConfig(**{**cfg.__dict__, "val_prevalence": 0.1}),
                              model_cfg=TINY)
    assert (low["n_val"], low["n_val_positive"]) == (17, 2)  # all 15 negatives, round(15 / 9) positives
    with pytest.raises(InputError, match="val_prevalence"):
        ClassifierTrainConfig(val_prevalence=1.0)


def test_tiny_classifier_learns_bright_vs_dark():
    rng = np.random.default_rng(0)
    n, size = 96, 16
    labels = np.arange(n) % 2
    brightness = np.where(labels == 1, 0.4, -0.4)[:, None, None, None]
    images = (brightness + 0.2 * rng.standard_normal((n, 2, size, size))).astype(np.float32)
    cfg = ClassifierTrainConfig(epochs=6, batch_size=16, lr=3e-3, seed=0, val_fraction=0.25)
    model, hist = train_classifier(images, labels, _groups(n), cfg, model_cfg=TINY)
    test_labels = np.arange(64) % 2
    test = (np.where(test_labels == 1, 0.4, -0.4)[:, None, None, None]
            + 0.2 * rng.standard_normal((64, 2, size, size))).astype(np.float32)
    probs = predict_proba(model, test, batch_size=16)
    assert probs.shape == (64,) and ((probs >= 0) & (probs <= 1)).all()
    assert balanced_accuracy(test_labels, (probs >= 0.5).astype(int)) > 0.9
    assert hist["best_val_balanced_accuracy"] == max(hist["val_balanced_accuracy"])


def test_predict_proba_uses_eval_mode_and_restores_it():
    images, _ = _random_data(6)
    model, _ = train_classifier(*_random_data(), _groups(24), ClassifierTrainConfig(epochs=1, batch_size=8, val_fraction=0),
                                model_cfg=TINY)
    model.train()
    whole = predict_proba(model, images, batch_size=6)
    split = np.concatenate([predict_proba(model, images[:1], 1), predict_proba(model, images[1:], 5)])
    np.testing.assert_allclose(whole, split, rtol=1e-5)  # batch statistics would make these differ
    assert model.training


def test_explicit_validation_set_and_bad_inputs():
    images, labels = _random_data()
    val = _random_data(8, seed=1)
    cfg = ClassifierTrainConfig(epochs=1, batch_size=8)
    _, hist = train_classifier(images, labels, _groups(24), cfg, val=val, model_cfg=TINY)
    assert len(hist["val_balanced_accuracy"]) == 1
    with pytest.raises(InputError, match="labels"):
        train_classifier(images, labels[:-1], _groups(24), ClassifierTrainConfig(epochs=1), model_cfg=TINY)
    with pytest.raises(InputError, match="groups_df"):
        train_classifier(images, labels, _groups(23), ClassifierTrainConfig(epochs=1), model_cfg=TINY)
    with pytest.raises(InputError, match="NaN"):
        train_classifier(np.full_like(images, np.nan), labels, _groups(24), ClassifierTrainConfig(epochs=1), model_cfg=TINY)


def test_validation_split_never_splits_a_donor_from_its_re_renders():
    rng = np.random.default_rng(0)
    real = pd.DataFrame({"subject_id": [f"r{i}" for i in range(40)]})
    real["split_group"] = real["subject_id"]
    donors = rng.choice(real["subject_id"], 60)  # up to several re-renders per donor
    syn = pd.DataFrame({"subject_id": [f"syn-{i}" for i in range(60)], "split_group": donors})
    groups = pd.concat([real, syn], ignore_index=True)
    labels = np.concatenate([rng.integers(0, 2, 40), np.ones(60, int)])
    for seed in range(5):
        train_idx, val_idx = validation_split(groups, labels, 0.25, seed)
        assert set(groups["split_group"][train_idx]).isdisjoint(groups["split_group"][val_idx])
        assert len(train_idx) + len(val_idx) == len(groups)
    # split by sample id instead (the old behaviour), some donor straddles the split: the test can fail
    ungrouped = groups.drop(columns="split_group")
    straddles = 0
    for seed in range(5):
        train_idx, val_idx = validation_split(ungrouped, labels, 0.25, seed)
        straddles += len(set(groups["split_group"][train_idx]) & set(groups["split_group"][val_idx]))
    assert straddles > 0


def test_a_step_budget_is_kept_exactly_and_counted_beforehand():
    images, labels = _random_data(n=30)
    for steps in (3, 7):
        cfg = ClassifierTrainConfig(epochs=1, batch_size=8, lr=1e-3, steps=steps, val_fraction=0.2)
        _, history = train_classifier(images, labels, _groups(30), cfg, model_cfg=TINY)
        assert history["steps"] == steps == planned_steps(_groups(30), labels, cfg)
    cfg = ClassifierTrainConfig(epochs=2, batch_size=8, lr=1e-3, val_fraction=0.2)
    _, history = train_classifier(images, labels, _groups(30), cfg, model_cfg=TINY)
    assert history["steps"] == planned_steps(_groups(30), labels, cfg) == 2 * steps_per_epoch(24, 8)
    assert [steps_per_epoch(n, 8) for n in (16, 17, 18)] == [2, 2, 3]  # a batch of one is skipped
