import numpy as np
import pytest
import torch

from data.attributes import Attributes
from data.errors import InputError
from data.prompts import attributes_to_prompt
from data.slices import SliceSet, attributes_frame
from evaluation.features import NO_WEIGHTS_NOTE, make_extractor
from evaluation.inception import FEATURE_DIM, FIDInception
from evaluation.segmenter import Segmenter, SegmenterConfig

TISSUE = np.array([0.1, 0.9, 0.3, 0.8])  # background, LV, MYO, RV intensity in [0, 1]


def ring_mask(size: int, rng: np.random.Generator, r_lv: float, wall: float) -> np.ndarray:
    """(size, size) internal labels: LV disk, myocardium ring, RV disk to its side."""
    xs, ys = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    cx, cy = size / 2 + rng.uniform(-1.5, 1.5), size / 2 + rng.uniform(-1.5, 1.5)
    d_lv = np.hypot(xs - cx, ys - cy)
    r_rv = 0.7 * r_lv + 1.5
    mask = np.zeros((size, size), np.uint8)
    mask[np.hypot(xs - (cx - r_lv - wall - 0.6 * r_rv), ys - cy) <= r_rv] = 3
    mask[d_lv <= r_lv + wall] = 2
    mask[d_lv <= r_lv] = 1
    return mask


def toy_slices(n_subjects: int, slices: int = 2, size: int = 32, seed: int = 0, prefix: str = "s") -> SliceSet:
    """Toy cohort with known masks. Sex and health alternate over subjects and show in the image (male: larger
    heart, brighter; heart failure: larger LV, thinner wall, less contraction), so classifiers can learn them."""
    rng = np.random.default_rng(seed)
    images, masks, ids, records = [], [], [], []
    for k in range(n_subjects):
        sex, health = ("female", "male")[k % 2], ("healthy", "heart_failure")[(k // 2) % 2]
        attrs = Attributes(sex, float(rng.uniform(40, 80)), float(rng.uniform(18, 34)), health)
        r = size * (0.11 + 0.04 * (sex == "male") + 0.03 * (health == "heart_failure"))
        wall, squeeze = (2.0, 0.9) if health == "heart_failure" else (3.5, 0.7)
        for _ in range(slices):
            r_ed = r * rng.uniform(0.9, 1.1)
            m = np.stack([ring_mask(size, rng, r_ed, wall), ring_mask(size, rng, r_ed * squeeze, wall + 1)])
            image = TISSUE[m] + 0.15 * (sex == "male") + rng.normal(0, 0.05, m.shape)
            images.append(np.clip(2 * image - 1, -1, 1))
            masks.append(m)
            ids.append(f"{prefix}{k}")
            records.append({**attrs.to_dict(), "subject_id": f"{prefix}{k}", "prompt": attributes_to_prompt(attrs)})
    return SliceSet(np.stack(images), np.stack(masks), ids, np.zeros(len(ids)), attributes_frame(records))


def test_auto_without_weights_uses_the_segmenter_and_names_it():
    torch.manual_seed(0)
    model = Segmenter(SegmenterConfig(base=4)).eval()
    extractor = make_extractor("auto", None, model, n_train_images=12, progress=False)
    assert extractor.name == "domain segmenter encoder (trained here on 12 real images)"
    assert extractor.note == NO_WEIGHTS_NOTE and "no FID Inception weights" in extractor.note
    images = toy_slices(3, 2).images
    feats = extractor(images)
    assert feats.shape == (6, 2 * 4 * 2 ** 3) and feats.dtype == np.float64 and np.isfinite(feats).all()
    extractor.batch_size = 4  # batching must not change features (GroupNorm is per image)
    np.testing.assert_allclose(extractor(images), feats, rtol=1e-5, atol=1e-6)


def test_inception_with_a_weights_file_gives_2048_features(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(FIDInception().state_dict(), path)  # random weights in the reference layout
    extractor = make_extractor("auto", path, segmenter=None, progress=False)
    assert extractor.name.startswith("FID-Inception-v3 (pt_inception-2015-12-05") and path.name in extractor.name
    feats = extractor(toy_slices(1, 2).images)
    assert feats.shape == (2, FEATURE_DIM) and np.isfinite(feats).all()


def test_segmenter_kind_ignores_given_weights(tmp_path):
    model = Segmenter(SegmenterConfig(base=4))
    extractor = make_extractor("segmenter", tmp_path / "absent.pth", model, progress=False)
    assert extractor.name.startswith("domain segmenter encoder")


@pytest.mark.parametrize("kind, weights, model, where", [
    ("inception", None, "model", "--inception-weights"),
    ("auto", None, None, "feature extractor"),
    ("segmenter", None, None, "feature extractor"),
    ("resnet", None, "model", "feature extractor"),
])
def test_impossible_choices_are_input_errors(kind, weights, model, where):
    model = Segmenter(SegmenterConfig(base=4)) if model else None
    with pytest.raises(InputError) as err:
        make_extractor(kind, weights, model, progress=False)
    assert err.value.where == where


def test_missing_weights_file_names_the_file(tmp_path):
    with pytest.raises(InputError, match="absent.pth"):
        make_extractor("inception", tmp_path / "absent.pth", progress=False)
