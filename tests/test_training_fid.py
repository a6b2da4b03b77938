import numpy as np
import pytest

from evaluation.fid import fid_from_features
from evaluation.training_fid import cross_fid_matrix, equal_n_fid


def test_identical_sets_give_fid_zero_and_repeats_that_differ():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 4))
    ids = [f"s{i}" for i in range(60)]
    whole = equal_n_fid(real, ids, real.copy(), n=60, repeats=3)  # every draw is the whole set, permuted
    assert whole["fake_vs_real"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert whole["with_replacement"] == {"real": False, "fake": False, "bound": True}  # halves hold 30 < 60
    part = equal_n_fid(real, ids, real.copy(), n=20, repeats=3)
    assert len(set(part["fake_vs_real"]["values"])) == 3  # independent subsets, not one subset three times
    assert part["fake_vs_real"]["std"] > 0


def test_too_few_fakes_are_drawn_with_replacement_and_said():
    rng = np.random.default_rng(1)
    out = equal_n_fid(rng.normal(size=(80, 3)), [f"s{i}" for i in range(80)], rng.normal(size=(10, 3)), 30, 2)
    assert out["with_replacement"]["fake"] and not out["with_replacement"]["real"]


def test_cross_matrix_diagonal_lowest_only_when_the_attribute_is_controlled():
    rng = np.random.default_rng(2)
    real_groups = np.array(["a"] * 40 + ["b"] * 40, dtype=object)
    real = rng.normal(size=(80, 3)) + np.where(real_groups == "a", 0.0, 4.0)[:, None]
    fake = rng.normal(size=(80, 3)) + np.where(real_groups == "a", 0.0, 4.0)[:, None]
    controlled = cross_fid_matrix(real, real_groups, fake, real_groups, 30, 5, 2, order=("b", "a"))
    assert controlled["values"] == ["b", "a"]
    assert all(controlled["diagonal_lowest_in_row"].values()) and all(controlled["diagonal_lowest_in_column"].values())
    swapped = np.where(real_groups == "a", "b", "a").astype(object)  # the prompt says the opposite
    ignored = cross_fid_matrix(real, real_groups, fake, swapped, 30, 5, 2)
    assert not any(ignored["diagonal_lowest_in_row"].values())
    assert "skipped" in cross_fid_matrix(real, real_groups, fake, [None] * 80, 30, 5, 2)


def test_a_large_pool_is_drawn_without_replacement_and_the_bound_splits_by_subject(monkeypatch):
    import evaluation.training_fid as training_fid
    calls = []

    def recording(x, y):  # column 0 of every feature row is its row index in its set
        calls.append((x[:, 0].astype(int), y[:, 0].astype(int)))
        return fid_from_features(x, y)

    monkeypatch.setattr(training_fid, "fid_from_features", recording)
    rng = np.random.default_rng(3)
    real = np.c_[np.arange(120), rng.normal(size=(120, 2))]
    ids = np.repeat([f"s{i}" for i in range(60)], 2)  # two images a subject
    fake = np.c_[np.arange(40), rng.normal(size=(40, 2))]
    out = equal_n_fid(real, ids, fake, n=25, repeats=3)
    assert out["with_replacement"] == {"real": False, "fake": False, "bound": False}
    assert len(calls) == 6  # per repeat: synthetic vs real, then the bound
    for real_rows, fake_rows in calls[0::2]:
        assert len(set(real_rows)) == len(set(fake_rows)) == 25
    for half_a, half_b in calls[1::2]:
        assert len(set(half_a)) == len(set(half_b)) == 25
        assert not set(ids[half_a]) & set(ids[half_b])  # no subject on both sides of the bound
