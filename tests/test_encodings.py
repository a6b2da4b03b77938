import math

import numpy as np
import pytest
import torch

from data.cohort import LV, MYO, RV
from data.errors import InputError
from geometry.encodings import CONTROL_TYPES, SDF_SCALE_FRACTION, control_channels, encode_control

SIZE = 64
CENTRE = (31.3, 32.6)  # off-grid so the digital disk is not perfectly symmetric


def radius_map(size: int = SIZE, centre=CENTRE) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.hypot(yy - centre[0], xx - centre[1])


def disk(radius: float, label: int = LV, size: int = SIZE) -> np.ndarray:
    return np.where(radius_map(size) <= radius, label, 0).astype(np.int64)


def random_masks(b: int = 2, f: int = 2, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 4, (b, f, size, size), generator=torch.Generator().manual_seed(seed))


def inner_boundary_reference(inside: np.ndarray) -> np.ndarray:
    """Pixels of the set with a 4-neighbour outside it (outside the image = outside the set)."""
    p = np.pad(inside, 1, constant_values=False)
    all_in = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return inside & ~all_in


@pytest.mark.parametrize("kind", CONTROL_TYPES)
@pytest.mark.parametrize("frames", [1, 2])
def test_shapes_and_channel_count(kind, frames):
    masks = random_masks(b=3, f=frames)
    out = encode_control(masks, kind)
    assert out.shape == (3, control_channels(kind, frames), 24, 24)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_single_frame_and_numpy_input():
    mask = disk(10)
    out = encode_control(mask, "onehot")
    assert out.shape == (1, 3, SIZE, SIZE)
    assert torch.equal(out, encode_control(torch.from_numpy(mask)[None, None], "onehot"))


def test_onehot_channels_match_labels_and_sum_to_foreground():
    masks = random_masks()
    out = encode_control(masks, "onehot")
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    per_frame = out.reshape(2, 2, 3, 24, 24)
    assert torch.equal(per_frame.sum(dim=2), (masks != 0).float())
    for k, label in enumerate((LV, MYO, RV)):
        assert torch.equal(per_frame[:, :, k], (masks == label).float())


def test_contours_are_the_inner_four_neighbour_boundary():
    masks = random_masks(seed=1)
    out = encode_control(masks, "contours").reshape(2, 2, 3, 24, 24).numpy()
    for b in range(2):
        for f in range(2):
            for k, label in enumerate((LV, MYO, RV)):
                expected = inner_boundary_reference(masks[b, f].numpy() == label)
                np.testing.assert_array_equal(out[b, f, k], expected.astype(np.float32))


def test_disk_contour_is_one_pixel_thick():
    radius = 20
    mask = disk(radius)
    contour = encode_control(mask, "contours")[0, 0].numpy().astype(bool)
    r = radius_map()
    assert (r[contour] <= radius).all() and (r[contour] > radius - 1.5).all()
    assert not contour[r <= radius - 1.5].any()
    # A one-pixel 8-connected digital circle has ~4*sqrt(2)*r pixels (r / sqrt(2) per octant).
    assert abs(contour.sum() / (4 * math.sqrt(2) * radius) - 1) < 0.05
    assert encode_control(mask, "contours")[0, 1:].sum() == 0  # no MYO, no RV


def test_contour_closes_at_image_border():
    mask = np.zeros((8, 8), dtype=np.int64)
    mask[:, :3] = RV  # touches top, bottom and left edges
    contour = encode_control(mask, "contours")[0, 2].numpy()
    np.testing.assert_array_equal(contour[:, 0], 1)
    np.testing.assert_array_equal(contour[0, :3], 1)
    assert contour[3:5, 1].sum() == 0  # interior


def test_sdf_matches_analytic_distance_of_a_disk():
    radius = 14
    out = encode_control(disk(radius), "sdf")[0].numpy()
    scale = SDF_SCALE_FRACTION * SIZE
    r = radius_map()
    lv = out[0]
    assert (lv[r <= radius] < 0).all() and (lv[r > radius] > 0).all()
    assert np.abs(lv).max() < 1.0
    # Undo the squashing: distance to the pixel edge is within about half a pixel of the exact circle distance.
    distance_px = np.arctanh(lv.astype(np.float64)) * scale
    np.testing.assert_allclose(distance_px, r - radius, atol=0.6)
    contour = encode_control(disk(radius), "contours")[0, 0].numpy().astype(bool)
    np.testing.assert_allclose(np.abs(lv[contour]), math.tanh(0.5 / scale), rtol=1e-5)


def test_sdf_strictly_increases_along_rays_from_the_centre():
    out = encode_control(disk(12), "sdf")[0, 0].numpy()
    row, col = 31, 33  # pixel nearest to CENTRE
    for ray in (out[row, col:], out[row, col::-1], out[row:, col], out[row::-1, col]):
        assert (np.diff(ray) > 0).all()


def test_sdf_absent_structure_is_constant_one_and_full_structure_negative():
    full = np.full((16, 16), MYO, dtype=np.int64)
    out = encode_control(full, "sdf")[0]
    assert torch.equal(out[0], torch.ones(16, 16)) and torch.equal(out[2], torch.ones(16, 16))
    assert (out[1] < 0).all()
    assert out[1].max() == out[1][0, 0]  # border pixels are closest to the (image) edge


def test_sdf_of_a_batch_equals_per_sample_sdf():
    masks = random_masks(b=3, seed=2)
    batch = encode_control(masks, "sdf")
    for i in range(3):
        assert torch.equal(batch[i : i + 1], encode_control(masks[i : i + 1], "sdf"))


def test_stacked_is_onehot_then_sdf():
    masks = random_masks(seed=3)
    expected = torch.cat([encode_control(masks, "onehot"), encode_control(masks, "sdf")], dim=1)
    assert torch.equal(encode_control(masks, "stacked"), expected)


def test_unknown_kind_raises_input_error():
    with pytest.raises(InputError, match="unknown control type 'edges'.*onehot"):
        encode_control(random_masks(), "edges")
    with pytest.raises(InputError, match="unknown control type"):
        control_channels("x")
    with pytest.raises(InputError):
        control_channels("onehot", frames=0)


@pytest.mark.parametrize("bad_label", [4, 7, -1])
def test_labels_outside_internal_convention_raise(bad_label):
    masks = random_masks()
    masks[0, 1, 3, 4] = bad_label
    with pytest.raises(InputError, match=rf"labels \[{bad_label}\]"):
        encode_control(masks, "onehot")


def test_bad_shapes_and_values_raise():
    with pytest.raises(InputError, match="shape"):
        encode_control(torch.zeros(2, 8, 8, dtype=torch.long), "onehot")
    with pytest.raises(InputError, match="non-integer"):
        encode_control(torch.full((8, 8), 1.5), "onehot")
    with pytest.raises(InputError, match="empty"):
        encode_control(torch.zeros(1, 2, 0, 8, dtype=torch.long), "onehot")
    # Integral floats (e.g. nearest-resized masks) are accepted.
    assert encode_control(torch.ones(8, 8), "onehot")[0, 0].sum() == 64
