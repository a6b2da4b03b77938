import numpy as np
import pytest
from scipy import linalg

from data.errors import InputError
from evaluation.fid import (feature_statistics, fid_from_features, frechet_distance, real_vs_real_bound,
                            repeated_fid, trace_sqrt_product)


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16)) * np.linspace(0.1, 3, 16)
    assert abs(fid_from_features(x, x)) < 1e-6


def test_fid_with_itself_is_zero_when_covariance_is_singular():
    x = np.random.default_rng(1).normal(size=(40, 64))  # N < D: rank-deficient covariance
    assert abs(fid_from_features(x, x)) < 1e-6


def test_fid_approaches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(2)
    d, n = 8, 20000
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.5, 4.0, d), rng.uniform(0.5, 4.0, d)
    a = mu1 + rng.normal(size=(n, d)) * np.sqrt(v1)
    b = mu2 + rng.normal(size=(n, d)) * np.sqrt(v2)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert fid_from_features(a, b) == pytest.approx(closed, rel=0.03)


def test_trace_sqrt_matches_scipy_sqrtm_on_non_commuting_covariances():
    rng = np.random.default_rng(3)
    m1, m2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(6), m2 @ m2.T + 0.1 * np.eye(6)
    reference = np.trace(linalg.sqrtm(s1 @ s2)).real
    assert trace_sqrt_product(s1, s2) == pytest.approx(reference, rel=1e-8)


def test_frechet_distance_is_symmetric_and_positive_for_different_gaussians():
    rng = np.random.default_rng(4)
    m = rng.normal(size=(5, 5))
    s1, s2 = np.eye(5), m @ m.T + np.eye(5)
    mu1, mu2 = np.zeros(5), np.ones(5)
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 == pytest.approx(d21, rel=1e-10)
    assert d12 > 5.0  # at least the squared mean shift


def test_feature_statistics_are_float64_mean_and_unbiased_covariance():
    x = np.random.default_rng(5).normal(size=(100, 3)).astype(np.float32)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == np.float64 and sigma.shape == (3, 3)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))


def test_repeated_fid_separates_shifted_sets_and_rejects_too_large_n():
    rng = np.random.default_rng(6)
    real, same, shifted = rng.normal(size=(600, 4)), rng.normal(size=(600, 4)), rng.normal(size=(600, 4)) + 1.0
    m_same, s_same = repeated_fid(real, same, n=200, repeats=5, seed=0)
    m_shift, _ = repeated_fid(real, shifted, n=200, repeats=5, seed=0)
    assert s_same > 0 and m_shift > 10 * m_same
    assert repeated_fid(real, same, n=200, repeats=5, seed=0) == (m_same, s_same)  # seeded
    with pytest.raises(InputError):
        repeated_fid(real, same, n=601, repeats=2)


def test_real_vs_real_bound_splits_by_subject():
    # each subject's images are near-copies of one vector: an image-level split would leak subjects into both
    # halves and give a much lower FID than the honest subject-level split
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(40, 3))
    ids = np.repeat(np.arange(40), 10)
    x = centres[ids] + 0.01 * rng.normal(size=(400, 3))
    bound, std = real_vs_real_bound(x, ids, n=100, repeats=5, seed=0)
    leaky, _ = repeated_fid(x, x, n=100, repeats=5, seed=0)
    assert bound > 2 * leaky and std > 0


def test_real_vs_real_bound_rejects_bad_subject_ids():
    x = np.random.default_rng(8).normal(size=(20, 3))
    with pytest.raises(InputError):
        real_vs_real_bound(x, np.zeros(20), n=5, repeats=2)  # one subject only
    with pytest.raises(InputError):
        real_vs_real_bound(x, np.arange(19), n=5, repeats=2)  # wrong length
    with pytest.raises(InputError):
        real_vs_real_bound(x, np.arange(20), n=15, repeats=2)  # halves of 10 cannot give 15


@pytest.mark.parametrize("a, b", [
    (np.full((10, 3), np.nan), np.zeros((10, 3))),  # NaN features
    (np.ones((10, 3)), np.ones((10, 4))),  # mismatched dimension
    (np.ones((1, 3)), np.ones((10, 3))),  # too few samples
    (np.ones(10), np.ones(10)),  # not (N, D)
])
def test_bad_features_raise_input_error(a, b):
    with pytest.raises(InputError):
        fid_from_features(a, b)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(InputError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
