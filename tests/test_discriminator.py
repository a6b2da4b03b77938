import numpy as np
import pytest

from evaluation.discriminator import discriminator_report, grouped_folds, out_of_fold_scores


def test_grouped_folds_never_split_a_group_and_balance_counts():
    rng = np.random.default_rng(0)
    groups = [f"d{g}" for g in rng.integers(0, 40, 500)]
    folds = grouped_folds(groups, 4, seed=3)
    for g in set(groups):
        assert len(set(folds[np.array(groups) == g])) == 1
    counts = np.bincount(folds, minlength=4)
    assert counts.max() - counts.min() <= np.bincount(np.unique(groups, return_inverse=True)[1]).max()


def _images(n, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 2, 32, 32)).astype(np.float32)


def test_identical_real_and_synthetic_images_give_auc_one_half():
    real = _images(24, 0)
    images = np.concatenate([real, real])  # each synthetic image is its donor, in the donor's fold
    is_syn = np.r_[np.zeros(24, int), np.ones(24, int)]
    groups = [f"s{i}" for i in range(24)] * 2
    scores = out_of_fold_scores(images, is_syn, groups, k=3, epochs=1)
    report = discriminator_report(scores, is_syn, groups, ["c"] * 48, ["g"] * 48, np.r_[np.zeros(24), np.ones(24)],
                                  n_boot=50)
    assert report["overall"]["auc"] == pytest.approx(0.5)
    assert report["overall"]["lo"] <= 0.5 <= report["overall"]["hi"]


def test_separable_synthetic_images_are_found():
    real, syn = _images(40, 1) * 0.2 - 0.5, _images(40, 2) * 0.2 + 0.5
    is_syn = np.r_[np.zeros(40, int), np.ones(40, int)]
    groups = [f"s{i}" for i in range(40)] * 2
    scores = out_of_fold_scores(np.concatenate([real, syn]), is_syn, groups, k=2, epochs=3)
    assert discriminator_report(scores, is_syn, groups, ["c"] * 80, ["g"] * 80, is_syn, n_boot=20)["overall"]["auc"] > 0.9


def test_shortcut_is_measured_inside_subgroups():
    # synthetic images carry the label in one subgroup; a score equal to "is synthetic" then predicts it there only
    is_syn = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    label = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    subgroups = ["x"] * 4 + ["y"] * 4
    report = discriminator_report(is_syn.astype(float), is_syn, [f"s{i}" for i in range(8)], ["c"] * 8, subgroups,
                                  label, n_boot=10)
    assert report["shortcut"]["x"]["p_label_synthetic"] == 1.0 and report["shortcut"]["x"]["p_label_real"] == 0.0
    assert report["shortcut"]["x"]["score_predicts_label_auc"] == 1.0
    assert report["shortcut"]["y"]["score_predicts_label_auc"] == pytest.approx(0.5)
    assert report["shortcut_within_subgroups"]["auc"] == pytest.approx(0.75)  # pairs-weighted mean of 1.0 and 0.5
