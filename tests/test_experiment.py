"""Tests for classify/experiment.py: arm training sets, arms differing only in data, a toy end-to-end run."""
import copy
from dataclasses import replace
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import classify.experiment as experiment
from classify.experiment import (ARMS, ExperimentConfig, arm_training_set, labels_of, run_experiment)
from classify.resnet import ClassifierConfig, ResNetClassifier
from classify.train import ClassifierTrainConfig
from data.errors import InputError
from data.slices import SliceSet

TINY = ClassifierConfig(widths=(4, 8), blocks_per_stage=(1, 1))
TRAIN = ClassifierTrainConfig(epochs=2, batch_size=16, lr=3e-3, augment=False)
CORE = ("real", "reweighted", "real+synthetic", "synthetic")  # the arms that are not issue 13's baselines
RUNNABLE = tuple(a for a in ARMS if a != "oracle")  # the toy problem has no extra real subjects to draw


def toy_slices(n_subjects: int, p_male_if_positive: float, seed: int, prefix: str, per_subject: int = 2,
               size: int = 16, labels=None) -> SliceSet:
    """Brightness encodes the label; a bright corner patch marks males, so sex is a shortcut wherever
    P(male | positive) != P(male | negative) = 1 - p_male_if_positive. Masks: a 6x6 LV at ED, 3x3 at ES for a
    negative (area EF 0.75), 5x5 for a positive (0.31)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_subjects) % 2 if labels is None else np.asarray(labels)
    male = rng.random(n_subjects) < np.where(labels == 1, p_male_if_positive, 1 - p_male_if_positive)
    images, records = [], []
    for k in range(n_subjects):
        for _ in range(per_subject):
            image = np.clip(rng.normal(0.3 if labels[k] else -0.3, 0.3, (2, size, size)), -1, 1)
            image[:, :4, :4] = 1.0 if male[k] else -1.0
            images.append(image)
            records.append({"subject_id": f"{prefix}{k}", "sex": "male" if male[k] else "female",
                            "age": 45.0 + 10 * (k % 3), "bmi": 22.0 + 4 * ((k // 3) % 3),
                            "health": "heart_failure" if labels[k] else "healthy", "prompt": ""})
    n = len(images)
    masks = np.zeros((n, 2, size, size), np.uint8)
    masks[:, 0, 6:12, 6:12] = 1
    for i, r in enumerate(records):
        side = 5 if r["health"] == "heart_failure" else 3
        masks[i, 1, 6:6 + side, 6:6 + side] = 1
    return SliceSet(np.stack(images).astype(np.float32), masks,
                    [r["subject_id"] for r in records], np.zeros(n), pd.DataFrame(records))


def toy_problem():
    """Real train with the sex shortcut (positives 85% male), a test set without it, a synthetic set against it."""
    return (toy_slices(24, 0.85, 0, "train-"), toy_slices(24, 0.5, 1, "test-"),
            toy_slices(12, 0.15, 2, "", per_subject=1))


def test_labels_of_marks_positive_conditions_and_reads_prompts_where_health_is_missing():
    slices = toy_slices(4, 0.5, 0, "s", per_subject=1)
    slices.attributes.loc[0, ["health", "prompt"]] = [None, "Male, age in 60s, heart failure"]
    slices.attributes.loc[1, "health"] = "myocardial_infarction"
    assert labels_of(slices).tolist() == [1, 0, 0, 1]
    assert labels_of(slices, ("heart_failure", "myocardial_infarction")).tolist() == [1, 1, 0, 1]


def test_arm_training_sets_hold_exactly_their_data():
    real, _, syn = toy_problem()
    n_real = len(real)
    images, labels, groups, balanced = arm_training_set("real", real, syn)
    assert np.array_equal(images, real.images) and np.array_equal(labels, labels_of(real)) and not balanced
    images_w, labels_w, groups_w, balanced_w = arm_training_set("reweighted", real, syn)
    assert balanced_w and np.array_equal(images_w, images) and groups_w.equals(groups)
    images_c, labels_c, groups_c, balanced_c = arm_training_set("real+synthetic", real, syn)
    assert not balanced_c and len(images_c) == n_real + len(syn)
    assert np.array_equal(images_c[n_real:], syn.images) and np.array_equal(labels_c[n_real:], labels_of(syn))
    assert all(s.startswith("syn-") for s in groups_c["subject_id"][n_real:])
    assert groups_c["sex"][n_real:].tolist() == syn.attributes["sex"].tolist()  # groups from the prompted attributes
    assert set(groups_c["subject_id"][:n_real]).isdisjoint(groups_c["subject_id"][n_real:])
    images_d, _, groups_d, _ = arm_training_set("synthetic", real, syn)
    assert np.array_equal(images_d, syn.images) and (groups_d["source"] == "synthetic").all()
    with pytest.raises(InputError, match="synthetic"):
        arm_training_set("real+synthetic", real, None)
    with pytest.raises(InputError, match="unknown arm"):
        arm_training_set("undersampled", real, syn)
    with pytest.raises(InputError, match="shaped"):
        arm_training_set("synthetic", real, toy_slices(4, 0.5, 0, "x", size=8))


class Spy:
    """Stands in for train_classifier and predict_proba: records calls; scores = label-correlated noise, the same
    for every call unless vary=True."""

    def __init__(self, y_test, vary: bool = False):
        self.train_calls, self.predict_calls, self.y_test, self.vary = [], [], y_test, vary

    def train(self, images, labels, groups_df, cfg, val=None, progress=False, model_cfg=None, metagroups=None):
        self.train_calls.append({"images": images, "labels": labels, "groups": groups_df, "cfg": cfg, "val": val,
                                 "model_cfg": model_cfg, "metagroups": metagroups})
        return ResNetClassifier(model_cfg), {"best_epoch": 0, "seed": cfg.seed}

    def predict(self, model, images, batch_size=256):
        self.predict_calls.append(images)
        rng = np.random.default_rng(len(self.predict_calls) if self.vary else 0)
        y = self.y_test if len(images) == len(self.y_test) else rng.integers(0, 2, len(images))  # validation rows
        return np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, len(images)), 0, 1)


def memoised(metric):
    """fairlearn's MetricFrame costs ~0.5 s a call; identical predictions need it only once."""
    cache = {}

    def wrapper(y_true, y_pred, y_score, groups, *args, **kwargs):
        key = (np.asarray(y_pred).tobytes(), np.asarray(y_score).tobytes(), repr(args), repr(kwargs))
        if key not in cache:
            cache[key] = metric(y_true, y_pred, y_score, groups, *args, **kwargs)
        return copy.deepcopy(cache[key])
    return wrapper


def spied_run(monkeypatch, real, test, syn, cfg):
    spy = Spy(labels_of(test))
    monkeypatch.setattr(experiment, "train_classifier", spy.train)
    monkeypatch.setattr(experiment, "predict_proba", spy.predict)
    monkeypatch.setattr(experiment, "fairness_summary", memoised(experiment.fairness_summary))
    monkeypatch.setattr(experiment, "subgroup_metrics", memoised(experiment.subgroup_metrics))
    return spy, run_experiment(real, test, syn, cfg, TINY, TRAIN, progress=False)


def test_arms_differ_only_in_their_training_set(monkeypatch):
    real, test, syn = toy_problem()
    cfg = ExperimentConfig(arms=CORE, seeds=(3, 5), n_boot=20, val_fraction=0.25)
    spy, result = spied_run(monkeypatch, real, test, [syn], cfg)
    assert len(spy.train_calls) == len(CORE) * 2 and result.arms == list(CORE)
    assert all(images is test.images for images in spy.predict_calls)  # one and the same test set
    for i, call in enumerate(spy.train_calls):
        arm = CORE[i // 2]
        images, labels, groups, balanced = arm_training_set(arm, real, syn)
        assert np.array_equal(call["images"], images) and np.array_equal(call["labels"], labels)
        assert call["groups"].equals(groups) and call["val"] is None  # validation comes from the arm's own subjects
        assert call["model_cfg"] is TINY and call["metagroups"] == cfg.groups
        expected = ClassifierTrainConfig(**{**TRAIN.__dict__, "seed": cfg.seeds[i % 2], "balanced_sampling": arm == "reweighted",
                                  "val_fraction": 0.25})
        assert call["cfg"] == expected


@pytest.mark.slow
def test_skipped_arms_are_recorded_with_a_reason(monkeypatch):
    real, test, syn = toy_problem()
    cfg = ExperimentConfig(seeds=(0,), n_boot=10)
    _, result = spied_run(monkeypatch, real, test, [], cfg)
    assert result.arms == ["real", "reweighted", "threshold", "oversampled", "ef-rule"] and result.comparison == {}
    assert set(result.skipped) == {"real+synthetic", "synthetic", "compute-matched", "oracle"}
    assert all("synthetic" in reason for arm, reason in result.skipped.items() if arm != "oracle")
    assert "real cohort" in result.skipped["oracle"]
    positives_only = syn.select(labels_of(syn) == 1)
    cfg = ExperimentConfig(arms=("real+synthetic", "synthetic"), seeds=(0,), n_boot=10)
    _, result = spied_run(monkeypatch, real, test, [positives_only], cfg)
    assert result.arms == ["real+synthetic"]
    assert "only class 1" in result.skipped["synthetic"]
    assert json.loads(result.to_json())["skipped"] == result.skipped


def test_test_subjects_seen_in_training_and_bad_configs_are_refused(monkeypatch):
    real, test, syn = toy_problem()
    with pytest.raises(InputError, match="unseen"):
        spied_run(monkeypatch, real, real.select(np.arange(4)), [syn], ExperimentConfig())
    for bad in ({"arms": ("real", "smote")}, {"seeds": ()}, {"n_boot": 0}, {"groups": ("ethnicity",)},
                {"groups": ()}):
        with pytest.raises(InputError, match="experiment") as err:  # refused when the config is read
            ExperimentConfig(**bad)
        assert "\n" not in str(err.value)


@pytest.mark.slow
def test_toy_experiment_runs_every_arm_with_finite_numbers(toy_result):
    result, test = toy_result
    assert result.arms == list(RUNNABLE) and result.skipped == {}
    deterministic = [a for a in RUNNABLE if a in experiment.DETERMINISTIC]  # a fixed rule runs once
    assert len(result.runs) == (len(RUNNABLE) - len(deterministic)) * 2 + len(deterministic)
    for arm in RUNNABLE:
        agg = result.aggregate[arm]
        for key in ("balanced_accuracy", "auroc", "worst_group_balanced_accuracy"):
            # a deterministic arm runs once: its std over runs is undefined
            assert math.isfinite(agg[key]["mean"]) and (arm in deterministic or math.isfinite(agg[key]["std"]))
        for column in ("sex", "age_group", "bmi_group"):
            assert math.isfinite(agg[column]["balanced_accuracy_gap"]["mean"])
    for run in result.runs:
        assert run["scores"].shape == (len(test),) and np.all((run["scores"] >= 0) & (run["scores"] <= 1))


@pytest.mark.slow
def test_save_writes_plain_json_and_the_subgroup_csv(toy_result, tmp_path):
    result, test = toy_result
    out = result.save(tmp_path / "exp")
    saved = json.loads((out / "experiment.json").read_text())  # strict JSON: NaN would not parse as a number here
    assert "NaN" not in (out / "experiment.json").read_text()
    assert saved["arms"] == list(RUNNABLE) and len(saved["runs"][0]["scores"]) == len(test)
    assert saved["aggregate"]["real"]["balanced_accuracy"]["mean"] == pytest.approx(
        result.aggregate["real"]["balanced_accuracy"]["mean"])
    table = pd.read_csv(out / "subgroups.csv")
    assert len(table) == sum(len(r["subgroups"]) for r in result.runs)
    assert set(table["arm"]) == set(RUNNABLE) and set(table["seed"]) == {0, 1}
    assert not list(out.glob(".*tmp"))


def test_primary_endpoint_is_checked_when_the_config_is_read():
    for bad in ({"primary_metric": "auroc"}, {"primary_arm": "smote"}, {"primary_baseline": "real+synthetic"},
                {"alpha": 0.7}):
        with pytest.raises(InputError, match="experiment.(primary|alpha)"):
            ExperimentConfig(**bad)


def test_threshold_is_chosen_on_the_real_arms_validation_subjects_only(monkeypatch):
    """Scores are a pixel of the image: training rows 0.3 (positive) / 0.1, test rows 0.7 / 0.45. Validation
    picks the cut 0.2; the test set alone would pick 0.575 -- and the arm must not."""
    real, test, syn = toy_problem()
    for slices, (pos, neg) in ((real, (0.3, 0.1)), (test, (0.7, 0.45))):
        slices.images[:, 0, 0, 8] = np.where(labels_of(slices) == 1, pos, neg)
    seen = []

    def predict(model, images, batch_size=256):
        seen.append(images)
        return images[:, 0, 0, 8].astype(np.float64)
    monkeypatch.setattr(experiment, "predict_proba", predict)
    runner = experiment.ArmRunner(real, syn, ExperimentConfig(seeds=(0,), val_fraction=0.25), TINY, TRAIN)
    scores, history, _ = runner.scores("threshold", 0, test)
    assert history["threshold"] == pytest.approx(0.2) and (scores >= 0.5).all()
    images, labels, groups, _ = arm_training_set("real", real, syn)
    val_idx = experiment.validation_split(groups, labels, 0.25, 0)[1]
    assert np.array_equal(seen[1], images[val_idx])  # the threshold saw the validation rows, and only those
    assert runner._models.keys() == {("real", 0)}
    runner.scores("real", 0, test)
    assert runner._models.keys() == {("real", 0)}  # the real arm reuses that classifier


@pytest.mark.slow
def test_compute_matched_trains_the_real_data_for_the_synthetic_arms_steps():
    real, test, syn = toy_problem()
    for base in ("real", "reweighted"):
        runner = experiment.ArmRunner(real, syn, ExperimentConfig(seeds=(0,), compute_matched_base=base), TINY,
                                      replace(TRAIN, batch_size=4))
        cfg = runner.train_config("compute-matched", 4)
        assert cfg.balanced_sampling == (base == "reweighted") and cfg.seed == 4
        assert np.array_equal(runner.data("compute-matched")[0], real.images)
    matched = runner.scores("compute-matched", 0, test)[1]["steps"]
    synthetic = runner.scores("real+synthetic", 0, test)[1]["steps"]
    assert matched == synthetic > runner.scores("real", 0, test)[1]["steps"]


def test_oversampled_arm_balances_metagroups_in_expectation_and_augments():
    from classify.train import _epoch_order, metagroup_keys, sample_weights
    real, _, syn = toy_problem()
    runner = experiment.ArmRunner(real, syn, ExperimentConfig(seeds=(0,), augment_strength=0.7), TINY, TRAIN)
    cfg = runner.train_config("oversampled", 0)
    assert cfg.balanced_sampling and cfg.augment_strength == 0.7
    assert runner.train_config("real", 0).augment_strength == 0 and not runner.train_config("real", 0).balanced_sampling
    _, labels, groups, _ = runner.data("oversampled")
    keys = metagroup_keys(groups.assign(label=labels), runner.exp_cfg.groups).to_numpy()
    generator = torch.Generator().manual_seed(0)
    drawn = np.concatenate([keys[_epoch_order(len(keys), sample_weights(keys), generator).numpy()]
                            for _ in range(400)])
    counts = pd.Series(drawn).value_counts()
    assert len(counts) == len(set(keys)) and counts.max() / counts.min() < 1.15  # raw counts differ far more
    assert pd.Series(keys).value_counts().max() / pd.Series(keys).value_counts().min() >= 2


def test_synthetic_rows_sit_with_their_donor_in_every_validation_split():
    real, _, syn = toy_problem()
    donors = {sid: real.subject_ids[2 * i] for i, sid in enumerate(syn.subject_ids)}  # one donor per sample
    for arm in ("real+synthetic", "synthetic"):
        _, labels, groups, _ = arm_training_set(arm, real, syn, donors=donors)
        syn_rows = groups["source"] == "synthetic"
        assert list(groups["split_group"][syn_rows]) == [donors[s] for s in syn.subject_ids]
        for seed in range(6):
            train_idx, val_idx = experiment.validation_split(groups, labels, 0.25, seed)
            assert set(groups["split_group"][train_idx]).isdisjoint(groups["split_group"][val_idx])
    groups = arm_training_set("real+synthetic", real, syn)[2]  # without donors: each sample its own group
    assert list(groups["split_group"][len(real):]) == list(groups["subject_id"][len(real):])


def test_oracle_arm_adds_extra_real_subjects_and_is_skipped_without_them():
    real, test, syn = toy_problem()
    extra = toy_slices(6, 0.15, 3, "oracle-", per_subject=1)
    images, labels, groups, balanced = arm_training_set("oracle", real, syn, oracle=extra)
    assert np.array_equal(images[len(real):], extra.images) and not balanced
    assert list(groups["split_group"][len(real):]) == extra.subject_ids  # real subjects: their own group
    runner = experiment.ArmRunner(real, syn, ExperimentConfig(seeds=(0,)), TINY, TRAIN)
    assert "real cohort" in runner.skip_reason("oracle")
    with pytest.raises(InputError, match="also name real"):
        arm_training_set("oracle", real, syn, oracle=real)
