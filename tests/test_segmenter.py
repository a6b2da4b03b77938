import numpy as np
import pytest
import torch

from data.errors import InputError
from evaluation.fidelity import dice_per_structure
from evaluation.segmenter import (SegmenterConfig, features, segment,
                                  train_segmenter)

S = 32


def _frame(rng, cx, cy, r_lv, wall):
    """One 'short-axis' frame: LV disk (1) in a myocardial ring (2) with an RV crescent-like blob (3) beside it."""
    yy, xx = np.mgrid[:S, :S].astype(float)
    ax = rng.uniform(0.85, 1.15)
    d = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) * ax) ** 2)
    mask = np.zeros((S, S), np.uint8)
    rv = np.sqrt(((xx - (cx - r_lv - wall - 3)) / 0.6) ** 2 + (yy - cy) ** 2) < r_lv + 1
    mask[rv] = 3
    mask[d < r_lv + wall] = 2
    mask[d < r_lv] = 1
    levels = np.array([-0.7, 0.8, -0.1, 0.5])  # bg, LV blood, MYO, RV blood
    image = levels[mask] + 0.15 * rng.normal(size=(S, S))
    return np.clip(image, -1, 1).astype(np.float32), mask


def synthetic_pairs(n, seed):
    rng = np.random.default_rng(seed)
    images, masks = np.zeros((n, 2, S, S), np.float32), np.zeros((n, 2, S, S), np.uint8)
    for i in range(n):
        cx, cy, r, wall = rng.uniform(17, 21), rng.uniform(13, 19), rng.uniform(4, 6), rng.uniform(2, 3)
        for t, shrink in enumerate((1.0, 0.7)):  # ED, then a contracted ES
            images[i, t], masks[i, t] = _frame(rng, cx, cy, r * shrink, wall * (2 - shrink))
    return images, masks


@pytest.fixture(scope="module")
def trained():
    images, masks = synthetic_pairs(48, seed=0)
    cfg = SegmenterConfig(base=8, depth=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: extra threads only add contention on a shared CPU
    try:
        return train_segmenter(images, masks, cfg, steps=250, lr=3e-3, seed=0, batch_size=16)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_segmenter_learns_held_out_shapes(trained):
    images, masks = synthetic_pairs(16, seed=1)
    pred = segment(trained, images)
    assert pred.shape == masks.shape and pred.dtype == np.uint8
    scores = dice_per_structure(pred, masks)
    assert min(scores.values()) > 0.8, scores


@pytest.mark.slow
def test_features_are_pooled_bottleneck_of_both_frames(trained):
    images, _ = synthetic_pairs(3, seed=2)
    f = features(trained, images)
    assert f.shape == (3, 2 * 8 * 2 ** 2)
    swapped = features(trained, images[:, ::-1].copy())  # ES, ED order swaps the two halves
    np.testing.assert_allclose(swapped[:, :32], f[:, 32:], atol=1e-5)


def test_bad_inputs_raise_input_error():
    images, masks = synthetic_pairs(2, seed=4)
    cfg = SegmenterConfig(base=4, depth=2)
    with pytest.raises(InputError):
        train_segmenter(images[:, :1], masks[:, :1], cfg, steps=1)  # not ED/ES pairs
    with pytest.raises(InputError):
        train_segmenter(images[..., :30, :30], masks[..., :30, :30], cfg, steps=1)  # 30 not divisible by 4
    with pytest.raises(InputError):
        train_segmenter(images, masks + 4, cfg, steps=1)  # label out of range
    with pytest.raises(InputError):
        train_segmenter(images, masks[:1], cfg, steps=1)  # count mismatch
