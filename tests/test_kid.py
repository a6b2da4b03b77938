import numpy as np
import pytest

from data.errors import InputError
from evaluation.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel


def test_mmd2_unbiased_matches_double_sum_definition():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)) + 0.3
    k = lambda u, v: (u @ v / 3 + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    kxx, kyy, kxy = (polynomial_kernel(u, v, 3, 1 / 3, 1) for u, v in ((x, x), (y, y), (x, y)))
    assert mmd2_unbiased(kxx, kyy, kxy) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


@pytest.mark.slow
def test_kid_of_one_distribution_is_near_zero_and_shift_is_clearly_positive():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(800, 16)), rng.normal(size=(800, 16))
    same_mean, same_std = kernel_inception_distance(a, b, num_subsets=30, subset_size=200, seed=0)
    shift_mean, shift_std = kernel_inception_distance(a, b + 0.5, num_subsets=30, subset_size=200, seed=0)
    assert abs(same_mean) < 3 * same_std
    assert shift_mean > 10 * shift_std and shift_mean > 20 * abs(same_mean)


def test_kid_is_seeded_and_clips_subset_size():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(40, 4))
    r1 = kernel_inception_distance(a, b, num_subsets=5, subset_size=1000, seed=3)
    assert r1 == kernel_inception_distance(a, b, num_subsets=5, subset_size=1000, seed=3)
    assert np.isfinite(r1).all()


@pytest.mark.parametrize("a, b, kwargs", [
    (np.full((10, 3), np.nan), np.zeros((10, 3)), {}),
    (np.ones((10, 3)), np.ones((10, 5)), {}),
    (np.ones((1, 3)), np.ones((10, 3)), {}),
    (np.ones((10, 3)), np.ones((10, 3)), {"num_subsets": 0}),
])
def test_bad_inputs_raise_input_error(a, b, kwargs):
    with pytest.raises(InputError):
        kernel_inception_distance(a, b, **kwargs)
