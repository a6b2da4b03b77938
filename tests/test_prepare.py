"""Tests for run/prepare_data.py with data.rare: only training subjects of the group go, the test set stays."""
import json
from collections import Counter

import pytest

from data.errors import InputError
from run.prepare_data import prepare_data
from data.preprocess import PreprocessConfig
from data.rare import RareGroup
from run.config import DataConfig
from tests.fixtures import write_acdc_fixture
from tests.test_acdc import _shared_acdc

MINF = "myocardial_infarction"


def subjects(slices, health=None):
    return {s for s, h in zip(slices.subject_ids, slices.attributes["health"]) if health in (None, h)}


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    return write_acdc_fixture(tmp_path_factory.mktemp("cohort"), n=20, shape=(24, 24, 3))  # 4 patients per group


def test_rare_drops_only_training_subjects_of_the_group(acdc_root, tmp_path, capsys):
    base = DataConfig(root=str(acdc_root), layout="acdc", preprocess=PreprocessConfig(size=32))
    plain = prepare_data(base, tmp_path / "plain", progress=False)
    rare_cfg = DataConfig(root=str(acdc_root), layout="acdc", preprocess=PreprocessConfig(size=32),
                          rare=RareGroup(value=MINF, keep=0.34))
    rare = prepare_data(rare_cfg, tmp_path / "rare", progress=False)
    assert rare.test.subject_ids == plain.test.subject_ids and (rare.test.images == plain.test.images).all()
    assert len(subjects(plain.train, MINF)) == 3 and len(subjects(rare.train, MINF)) == 1  # round(0.34 * 3)
    dropped = subjects(plain.train) - subjects(rare.train)
    assert dropped == set(rare.rare["dropped"]) and dropped <= subjects(plain.train, MINF)
    assert subjects(rare.train, MINF) == set(rare.rare["kept"])
    split = json.loads((tmp_path / "rare" / "split.json").read_text())
    assert set(split["train"]) == subjects(rare.train) and split["rare"]["dropped"] == sorted(dropped)
    assert "[data] rare group: health = myocardial_infarction" in capsys.readouterr().out
    again = prepare_data(rare_cfg, tmp_path / "again", progress=False)  # deterministic from data.split_seed
    assert again.rare == rare.rare and plain.rare is None and "rare" not in json.loads(
        (tmp_path / "plain" / "split.json").read_text())


def test_a_group_the_cohort_lacks_fails_before_anything_is_written(acdc_root, tmp_path):
    cfg = DataConfig(root=str(acdc_root), layout="acdc", rare=RareGroup(value="heart_failure"))
    with pytest.raises(InputError, match="none of the cohort's subjects has health 'heart_failure'; they have "
                                         "healthy, myocardial_infarction, dilated_cardiomyopathy"):
        prepare_data(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_shared_acdc_keeps_a_quarter_of_the_training_infarcts(tmp_path):
    root = _shared_acdc()
    if not root.is_dir():
        pytest.skip(f"shared ACDC copy not found at {root} (set CARDIAC_LDM_ACDC to its folder)")
    cfg = DataConfig(root=str(root), layout="acdc", preprocess=PreprocessConfig(size=32, unknown_spacing_mm=1.5),
                     rare=RareGroup(value=MINF, keep=0.25))
    data = prepare_data(cfg, tmp_path, progress=False)  # the published copy has true spacing: no fallback warning
    train = Counter(h for s, h in {(s, h) for s, h in zip(data.train.subject_ids, data.train.attributes["health"])})
    test = Counter(h for s, h in {(s, h) for s, h in zip(data.test.subject_ids, data.test.attributes["health"])})
    assert train[MINF] == 4 and all(n == 15 for h, n in train.items() if h != MINF)  # 15 training patients per group
    assert set(test.values()) == {5} and len(test) == 5  # the held-out patients are all there
    assert len(data.rare["dropped"]) == 11


def test_a_cached_slice_set_stands_in_for_the_cohort_folder(acdc_root, tmp_path):
    cfg = DataConfig(root=str(acdc_root), layout="acdc", preprocess=PreprocessConfig(size=32, all_lv_slices=True))
    direct = prepare_data(cfg, tmp_path / "direct", progress=False)
    (cache,) = (tmp_path / "direct" / "cache").glob("slices-*.npz")
    from_cache = prepare_data(DataConfig(root=str(cache), preprocess=cfg.preprocess), tmp_path / "carried", progress=False)
    for a, b in ((direct.train, from_cache.train), (direct.test, from_cache.test)):
        assert a.subject_ids == b.subject_ids and (a.images == b.images).all() and a.prompts == b.prompts
    assert json.loads((tmp_path / "carried" / "split.json").read_text()) == json.loads((tmp_path / "direct" / "split.json").read_text())
    assert all(p.endswith(" slice") for p in direct.train.prompts)
    with pytest.raises(InputError, match="data.preprocess"):
        prepare_data(DataConfig(root=str(cache), preprocess=PreprocessConfig(size=32)), tmp_path / "other", progress=False)
