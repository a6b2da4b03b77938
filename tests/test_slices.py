import numpy as np
import pandas as pd
import pytest

import data.slices as slices_module
from data.attributes import Attributes
from data.cohort import LV, MYO, Subject
from data.errors import InputError
from data.preprocess import PreprocessConfig, config_hash
from data.slices import SliceSet, build_slice_set, cohort_key


def small_subject(subject_id: str, seed: int, attributes: Attributes = Attributes(), spacing=(1.5, 1.5, 8.0)):
    """A noisy 48 x 48 x 8 volume with an LV disk (+ MYO ring) on slices 2..5, centre varying with the seed."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(18, 30, 2)
    r = np.hypot(*np.meshgrid(np.arange(48) - centre[0], np.arange(48) - centre[1], indexing="ij"))
    mask = np.zeros((48, 48, 8), np.uint8)
    mask[..., 2:6][r <= 9] = MYO
    mask[..., 2:6][r <= 6] = LV
    image = (mask * 0.3 + rng.normal(0, 0.05, mask.shape)).astype(np.float32)
    return Subject(subject_id, image, 0.9 * image, mask, mask.copy(), np.eye(4),
                   spacing, attributes)


def cohort():
    return [small_subject("a", 0, Attributes("female", 47.0, 22.0, "heart_failure")),
            small_subject("b", 1, Attributes("male", None, 31.0, "healthy")),
            small_subject("c", 2)]


CFG = PreprocessConfig(size=16, crop_mm=48.0, slice_offsets=(-1, 0, 1))


def test_build_collects_every_sample_with_attributes_and_prompts():
    built = build_slice_set(cohort(), CFG, progress=False)
    assert len(built) == 9  # 3 subjects x 3 slices, all inside the LV (slices 2..5, mid 3)
    assert built.images.shape == built.masks.shape == (9, 2, 16, 16)
    assert built.slice_index.tolist() == [2, 3, 4] * 3
    assert built.subject_ids == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert built.attributes["subject_id"].tolist() == built.subject_ids
    assert built.prompts[0] == "Female, age in 40s, normal BMI, heart failure"
    assert built.prompts[3] == "Male, obese BMI, healthy"
    assert built.prompts[6] == ""  # no metadata: the unconditional prompt
    assert np.isnan(built.attributes["age"][3]) and built.attributes["sex"][6] is None


def test_save_load_round_trip_without_pickle(tmp_path):
    built = build_slice_set(cohort(), CFG, progress=False)
    path = built.save(tmp_path / "set.npz")
    with np.load(path, allow_pickle=False) as raw:
        assert all(raw[k].dtype != object for k in raw.files)
    back = SliceSet.load(path)
    np.testing.assert_array_equal(back.images, built.images)
    np.testing.assert_array_equal(back.masks, built.masks)
    np.testing.assert_array_equal(back.slice_index, built.slice_index)
    assert back.subject_ids == built.subject_ids
    pd.testing.assert_frame_equal(back.attributes, built.attributes)
    assert [p.name for p in tmp_path.iterdir()] == ["set.npz"]  # atomic write leaves no temp file


def test_select_and_bad_files(tmp_path):
    built = build_slice_set(cohort(), CFG, progress=False)
    part = built.select([4, 0])
    assert part.subject_ids == ["b", "a"] and part.prompts == [built.prompts[4], built.prompts[0]]
    np.testing.assert_array_equal(part.images[0], built.images[4])
    assert len(built.select(np.array(built.subject_ids) == "c")) == 3
    assert len(built.select([])) == 0
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz"):
        SliceSet.load(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="missing.npz"):
        SliceSet.load(tmp_path / "missing.npz")


def test_cache_hit_is_identical_and_keys_separate_configs_and_cohorts(tmp_path, monkeypatch):
    subjects = cohort()
    first = build_slice_set(subjects, CFG, tmp_path, progress=False)
    expected = tmp_path / f"slices-{config_hash(CFG)}-{cohort_key(subjects)}.npz"
    assert [p.name for p in tmp_path.iterdir()] == [expected.name]

    def no_preprocessing(*args):
        raise AssertionError("cache hit expected")

    with monkeypatch.context() as patch:
        patch.setattr(slices_module, "preprocess_subject", no_preprocessing)
        again = build_slice_set(cohort(), CFG, tmp_path, progress=False)
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.masks, first.masks)
    pd.testing.assert_frame_equal(again.attributes, first.attributes)

    build_slice_set(subjects, PreprocessConfig(size=16, crop_mm=40.0, slice_offsets=(-1, 0, 1)), tmp_path, progress=False)
    build_slice_set(subjects[:2], CFG, tmp_path, progress=False)
    assert len(list(tmp_path.glob("slices-*.npz"))) == 3
    # Same ids but different content or metadata: a different cohort.
    changed = cohort()
    changed[0].image_ed[0, 0, 0] += 1.0
    relabelled = cohort()
    relabelled[1].attributes = Attributes("male", 60.0, 31.0, "healthy")
    assert len({cohort_key(subjects), cohort_key(changed), cohort_key(relabelled)}) == 3


def test_corrupt_cache_is_rebuilt(tmp_path):
    subjects = cohort()
    path = tmp_path / f"slices-{config_hash(CFG)}-{cohort_key(subjects)}.npz"
    path.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="rebuilding"):
        built = build_slice_set(subjects, CFG, tmp_path, progress=False)
    np.testing.assert_array_equal(SliceSet.load(path).images, built.images)


def test_cohort_errors_and_unknown_spacing_warning():
    with pytest.raises(InputError, match="no subjects"):
        build_slice_set([], CFG, progress=False)
    with pytest.raises(InputError, match="unique.*a"):
        build_slice_set([small_subject("a", 0), small_subject("a", 1)], CFG, progress=False)
    with pytest.raises(InputError, match="slice_offsets"):
        build_slice_set(cohort(), PreprocessConfig(size=16, slice_offsets=(7,)), progress=False)
    with pytest.warns(UserWarning, match="1 subject"):
        build_slice_set([small_subject("x", 0, spacing=None), small_subject("y", 1)], CFG, progress=False)
