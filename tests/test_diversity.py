import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist

from data.errors import InputError
from evaluation.diversity import mean_pairwise_ms_ssim, ms_ssim, nearest_real_distance, num_scales


def _smooth_image(seed, size=64):
    x = gaussian_filter(np.random.default_rng(seed).normal(size=(size, size)), 3)
    return np.clip(x / np.abs(x).max(), -1, 1)


def test_ms_ssim_of_an_image_with_itself_is_one():
    x = _smooth_image(0)
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert ms_ssim(np.stack([x, -x]), np.stack([x, -x])) == pytest.approx(1.0, abs=1e-12)  # (C, H, W)


def test_ms_ssim_decreases_with_noise_and_is_symmetric():
    x = _smooth_image(1)
    rng = np.random.default_rng(2)
    noisy = [np.clip(x + s * rng.normal(size=x.shape), -1, 1) for s in (0.05, 0.2, 0.5)]
    scores = [ms_ssim(x, y) for y in noisy]
    assert 1.0 > scores[0] > scores[1] > scores[2] >= 0.0
    assert ms_ssim(noisy[1], x) == pytest.approx(scores[1], rel=1e-12)


def test_single_scale_matches_windowed_ssim_definition():
    # 14 px images hold one 11-px scale: MS-SSIM is then plain SSIM averaged over the 4x4 valid window positions
    rng = np.random.default_rng(5)
    x, y = rng.uniform(-1, 1, (14, 14)), rng.uniform(-1, 1, (14, 14))
    y = 0.5 * x + 0.5 * y
    r = np.arange(11) - 5
    g = np.exp(-r ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    values = []
    for i in range(4):
        for j in range(4):
            a, b = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb, cov = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum(), (w * (a - ma) * (b - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    assert ms_ssim(x, y) == pytest.approx(np.mean(values), rel=1e-9)


def test_number_of_scales_fits_the_11_pixel_window():
    assert [num_scales(s) for s in (256, 176, 160, 64, 32, 11, 10)] == [5, 5, 4, 3, 2, 1, 0]
    with pytest.raises(InputError):
        ms_ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_mean_pairwise_ms_ssim_is_one_for_copies_and_lower_for_distinct_images():
    x = _smooth_image(3, 32)
    assert mean_pairwise_ms_ssim(np.stack([x, x, x])) == pytest.approx(1.0, abs=1e-12)
    distinct = np.stack([_smooth_image(s, 32) for s in range(4, 10)])
    score = mean_pairwise_ms_ssim(distinct)
    assert score < 0.5
    pairs = [ms_ssim(distinct[i], distinct[j]) for i in range(6) for j in range(i + 1, 6)]
    assert score == pytest.approx(np.mean(pairs), rel=1e-10)
    assert 0 <= mean_pairwise_ms_ssim(distinct, max_pairs=5, seed=0) <= 1


def test_nearest_real_distance_matches_brute_force_and_finds_copies():
    rng = np.random.default_rng(11)
    real = rng.normal(size=(50, 2, 8, 8))
    fake = rng.normal(size=(7, 2, 8, 8))
    fake[3] = real[17]  # a memorised training image
    d = nearest_real_distance(fake, real, chunk=3)
    expected = cdist(fake.reshape(7, -1), real.reshape(50, -1)).min(axis=1)
    np.testing.assert_allclose(d, expected, atol=1e-6)
    assert d[3] < 1e-6 and np.delete(d, 3).min() > 1.0


@pytest.mark.parametrize("fake, real", [
    (np.zeros((3, 4)), np.zeros((5, 6))),  # item shapes differ
    (np.full((3, 4), np.nan), np.zeros((5, 4))),
    (np.zeros((0, 4)), np.zeros((5, 4))),
])
def test_nearest_real_distance_rejects_bad_inputs(fake, real):
    with pytest.raises(InputError):
        nearest_real_distance(fake, real)


def test_pairwise_needs_two_images():
    with pytest.raises(InputError):
        mean_pairwise_ms_ssim(np.zeros((1, 32, 32)))
