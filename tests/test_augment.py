"""Tests for classify/augment.py: identity at zero strength, one draw for every channel, masks kept aligned."""
import torch

import classify.augment as augment
from classify.augment import apply_affine, classical_augment, random_affine


def _square(b=8, size=32):
    """(B, 2, S, S) images: -1 background, +1 in an off-centre square; the matching 0/1 masks."""
    masks = torch.zeros(b, 2, size, size, dtype=torch.uint8)
    masks[:, :, 6:18, 10:24] = 1
    return masks.float() * 2 - 1, masks


def test_zero_strength_is_the_identity_and_small_strength_nearly_so():
    x, masks = _square()
    same, same_masks = classical_augment(x, torch.Generator().manual_seed(0), 0.0, masks)
    assert torch.equal(same, x) and torch.equal(same_masks, masks)
    theta = random_affine(len(x), torch.Generator().manual_seed(0), 1e-6)
    assert torch.allclose(apply_affine(x, theta), x, atol=1e-4)  # the geometric path itself tends to the identity
    assert torch.equal(apply_affine(masks, theta, mode="nearest", fill=0.0), masks)


def test_one_draw_moves_every_channel_alike_and_is_seeded(monkeypatch):
    monkeypatch.setattr(augment, "NOISE_STD", 0.0)  # the only per-pixel part
    x = torch.rand(6, 1, 24, 24) * 2 - 1
    out, _ = classical_augment(x.repeat(1, 2, 1, 1), torch.Generator().manual_seed(1), 1.0)
    assert torch.equal(out[:, 0], out[:, 1]) and not torch.allclose(out, x.repeat(1, 2, 1, 1), atol=1e-2)
    again, _ = classical_augment(x.repeat(1, 2, 1, 1), torch.Generator().manual_seed(1), 1.0)
    assert torch.equal(out, again)


def test_masks_follow_their_image():
    x, masks = _square()
    out, moved = classical_augment(x, torch.Generator().manual_seed(2), 2.0, masks)
    assert moved.dtype == torch.uint8 and set(moved.unique().tolist()) <= {0, 1}
    assert not torch.equal(moved, masks)  # it did move
    agree = ((out > 0) == (moved == 1)).float().mean(dim=(1, 2, 3))
    assert agree.min() > 0.97  # only boundary pixels (bilinear vs nearest) may disagree
    other = classical_augment(x, torch.Generator().manual_seed(3), 2.0, masks)[1]
    assert ((out > 0) == (other == 1)).float().mean() < agree.mean()  # another draw's masks do not fit as well
