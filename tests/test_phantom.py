"""Phantom difficulty knobs (data.phantom): off = the original cohort byte for byte; each knob does what it says."""
from __future__ import annotations

import json
from dataclasses import asdict

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from data.attributes import Attributes
from data.cohort import LV, MYO
from data.errors import InputError
from data.phantom import PhantomKnobs, anatomy_from_attributes, render
from data.synthetic import MARKER, generate_cohort, render_subject
from run.config import load_run_config
from run.prepare_data import prepare_data, synthetic_cohort

SMALL = (48, 48, 4)
GEOMETRY = ("lv_radius", "wall", "ef", "rv_depth", "rv_ef", "lv_length", "infarct_depth")
# every knob set but none active: a sign with no preserved-EF subject, a subgroup at rate 0
INERT = PhantomKnobs(sign=0.3, group_key="age_group", group_value="<55", group_preserved_ef=0.0)


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _hf_anatomy(knobs: PhantomKnobs, preserved: bool, health: str = "heart_failure", seed: int = 3, **attrs):
    fields = {"sex": "male", "age": 65, "bmi": 28.0, **attrs}
    return anatomy_from_attributes(Attributes(health=health, **fields), np.random.default_rng(seed), knobs, preserved)


def test_knobs_off_give_the_original_cohort_byte_for_byte(tmp_path):
    assert PhantomKnobs().off and INERT.off and not PhantomKnobs(preserved_ef=0.1).off
    default = _files(generate_cohort(tmp_path / "a", 6, seed=2, shape=SMALL))
    explicit = _files(generate_cohort(tmp_path / "b", 6, seed=2, shape=SMALL, knobs=INERT))
    assert default == explicit  # images, masks, metadata.csv and the marker
    for k, health in enumerate(("healthy", "heart_failure", "myocardial_infarction")):
        attrs = Attributes("female", 50, 24.0, health)
        a = render_subject(attrs, np.random.default_rng(k), SMALL)
        b = render_subject(attrs, np.random.default_rng(k), SMALL, knobs=INERT)
        assert all(np.array_equal(a[key], b[key]) for key in a)


def test_knobs_off_keep_the_cohort_cache_key(tmp_path):
    synthetic_cohort(tmp_path / "c", 2, 0)
    assert (tmp_path / "c" / ".complete").read_text() == "2 0 biased 1000001"  # the key before the knobs existed
    knobs = PhantomKnobs(preserved_ef=1.0)
    synthetic_cohort(tmp_path / "c", 2, 0, knobs=knobs)  # a knob on: another key, so the cohort is regenerated
    assert json.dumps(asdict(knobs), sort_keys=True) in (tmp_path / "c" / ".complete").read_text()
    assert "phantom" in json.loads((tmp_path / "c" / MARKER).read_text())


def test_preserved_ef_heart_failure_has_healthy_geometry_and_only_the_myocardial_sign():
    knobs = PhantomKnobs(preserved_ef=1.0, sign=0.06)
    healthy, preserved = _hf_anatomy(knobs, False, "healthy"), _hf_anatomy(knobs, True)
    classic = _hf_anatomy(knobs, False)
    # same draws: a preserved-EF subject is the healthy subject plus the sign, nothing else
    assert all(getattr(preserved, f) == getattr(healthy, f) for f in GEOMETRY)
    assert preserved.myo == pytest.approx(healthy.myo + 0.06)
    assert 0.50 <= preserved.ef <= 0.74 and classic.ef <= 0.42 and classic.lv_radius > 1.2 * healthy.lv_radius
    with pytest.raises(InputError, match="heart_failure only"):
        _hf_anatomy(knobs, True, "healthy")


def test_the_appearance_sign_is_in_the_rendered_myocardium():
    knobs = PhantomKnobs(preserved_ef=1.0, sign=0.06)
    images = {}
    for name, health, preserved in (("healthy", "healthy", False), ("preserved", "heart_failure", True)):
        rng = np.random.default_rng(11)
        images[name] = render(_hf_anatomy(knobs, preserved, health, seed=11), (64, 64, 8), rng)
    ed, mask = {k: v["sa_ED"].astype(float) for k, v in images.items()}, images["healthy"]["seg_sa_ED"]
    assert np.array_equal(mask, images["preserved"]["seg_sa_ED"])  # the masks (the ControlNet's input) cannot tell
    rise = (ed["preserved"][mask == MYO].mean() - ed["healthy"][mask == MYO].mean()) / ed["healthy"][mask == LV].mean()
    assert 0.5 * 0.06 < rise < 1.5 * 0.06  # the sign, relative to blood, as declared
    far = mask == 0
    assert abs(ed["preserved"][far].mean() - ed["healthy"][far].mean()) < 0.1 * rise * ed["healthy"][mask == LV].mean()


def test_preserved_ef_cohort_keeps_the_label_and_a_healthy_ejection_fraction(tmp_path):
    out = generate_cohort(tmp_path / "p", 24, seed=0, shape=(64, 64, 8), knobs=PhantomKnobs(preserved_ef=1.0))
    meta = pd.read_csv(out / "metadata.csv")
    preserved = json.loads((out / MARKER).read_text())["preserved_ef"]
    hf = meta.loc[meta["health"] == "heart_failure", "eid"].tolist()
    assert hf and sorted(preserved) == sorted(hf)  # rate 1: every heart-failure subject, labelled as such
    for eid in hf:
        ed, es = (np.asarray(nib.load(out / str(eid) / f"seg_sa_{p}.nii.gz").dataobj) == LV for p in ("ED", "ES"))
        assert 0.48 < 1.0 - es.sum() / ed.sum() < 0.76  # healthy range (0.50-0.74) up to pixelation


def test_levels_share_subjects_and_the_preserved_set_grows(tmp_path):
    half = generate_cohort(tmp_path / "h", 30, seed=1, shape=SMALL, knobs=PhantomKnobs(preserved_ef=0.5))
    full = generate_cohort(tmp_path / "f", 30, seed=1, shape=SMALL, knobs=PhantomKnobs(preserved_ef=1.0))
    sets = [set(json.loads((d / MARKER).read_text())["preserved_ef"]) for d in (half, full)]
    assert sets[0] < sets[1]  # common random numbers: a subject preserved at 0.5 is preserved at 1.0
    a, b = _files(half), _files(full)
    assert a["metadata.csv"] == b["metadata.csv"]
    untouched = [k for k in a if k.endswith(".nii.gz") and int(k.split("/")[0]) not in sets[1]]
    assert untouched and all(a[k] == b[k] for k in untouched)


def test_subgroup_specific_presentation():
    knobs = PhantomKnobs(group_key="age_group", group_value="<55", group_preserved_ef=1.0)
    assert not knobs.off
    assert knobs.preserved_ef_rate(Attributes("male", 45, 27.0, "heart_failure")) == 1.0
    assert knobs.preserved_ef_rate(Attributes("male", 70, 27.0, "heart_failure")) == 0.0
    rng = np.random.default_rng(0)
    assert knobs.is_preserved_ef(Attributes("female", 45, 22.0, "heart_failure"), rng)
    assert not knobs.is_preserved_ef(Attributes("female", 45, 22.0, "healthy"), rng)
    assert not knobs.is_preserved_ef(Attributes("female", 70, 22.0, "heart_failure"), rng)


def test_attribute_geometry_moves_the_lv_in_the_declared_direction():
    def lv(g: float, **attrs):
        return _hf_anatomy(PhantomKnobs(attribute_geometry=g), False, "healthy", seed=5, **attrs)

    base, old_obese_man = lv(0.0, sex="male", age=75, bmi=37.0), lv(1.0, sex="male", age=75, bmi=37.0)
    assert old_obese_man.lv_radius == pytest.approx(base.lv_radius * (1 + 0.08 + 0.04 * 2.0 + 0.03 * 1.5))
    assert old_obese_man.wall > base.wall and old_obese_man.ef < base.ef
    young_lean_woman = (lv(0.0, sex="female", age=45, bmi=21.0), lv(1.0, sex="female", age=45, bmi=21.0))
    assert young_lean_woman[1].lv_radius < young_lean_woman[0].lv_radius  # below the reference: smaller
    volume = [(render(a, SMALL, np.random.default_rng(0))["seg_sa_ED"] == LV).sum() for a in (base, old_obese_man)]
    assert volume[1] > 1.2 * volume[0]


@pytest.mark.parametrize("bad", [dict(group_key="age_group"), dict(group_key="age", group_value="<55"),
                                 dict(group_key="sex", group_value="other"), dict(preserved_ef=1.5),
                                 dict(attribute_geometry=-1.0)])
def test_bad_knobs_are_one_clear_error(bad):
    with pytest.raises(InputError, match="data.phantom"):
        PhantomKnobs(**bad)


def test_knobs_refuse_a_real_cohort(tmp_path):
    cfg = load_run_config("configs/smoke.yaml", [f"data.root={tmp_path}", "data.phantom.preserved_ef=0.5"])
    with pytest.raises(InputError, match="data.phantom"):
        prepare_data(cfg.data, tmp_path / "run")
