"""Synthetic cohort: determinism, layout, masks, anatomy that follows metadata, the built-in bias, CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_fill_holes

from data.attributes import Attributes
from data.cohort import LV, MYO, RV
from data.errors import InputError
from data.phantom import INTENSITY_SCALE, anatomy_from_attributes, render
from data.synthetic import (MARKER, SUBJECT_FILES, generate_cohort, hf_probability, render_subject,
                            sample_metadata)

ROOT = Path(__file__).resolve().parents[1]
SMALL = (48, 48, 4)


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _render_group(attrs: Attributes, count: int, shape=SMALL, seed: int = 0) -> list[dict]:
    return [render_subject(attrs, np.random.default_rng([seed, k]), shape) for k in range(count)]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = _all_bytes(generate_cohort(tmp_path / "a", 3, seed=7, shape=SMALL))
    b = _all_bytes(generate_cohort(tmp_path / "b", 3, seed=7, shape=SMALL))
    c = _all_bytes(generate_cohort(tmp_path / "c", 3, seed=8, shape=SMALL))
    assert a == b
    assert len(a) == 3 * 4 + 2  # four volumes per subject + metadata.csv + marker
    images = [k for k in a if k.endswith("sa_ED.nii.gz")]
    assert all(a[k] != c[k] for k in images)


def test_subject_k_does_not_depend_on_n(tmp_path):
    assert sample_metadata(3, 5).equals(sample_metadata(10, 5).head(3))
    small = _all_bytes(generate_cohort(tmp_path / "small", 2, seed=5, shape=SMALL))
    large = _all_bytes(generate_cohort(tmp_path / "large", 4, seed=5, shape=SMALL))
    subject_files = [k for k in small if k.endswith(".nii.gz")]
    assert len(subject_files) == 8 and all(small[k] == large[k] for k in subject_files)


def test_layout_headers_and_no_temp_files(tmp_path):
    out = generate_cohort(tmp_path / "cohort", 1, seed=0)  # default shape: UK Biobank-like voxel size
    folder = out / "1000001"
    assert sorted(p.name for p in folder.iterdir()) == sorted(SUBJECT_FILES)
    image, mask = nib.load(folder / "sa_ED.nii.gz"), nib.load(folder / "seg_sa_ES.nii.gz")
    assert image.shape == (96, 96, 8) and mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(image.affine, np.diag([1.8, 1.8, 10.0, 1.0]), atol=1e-5)
    assert image.header.get_xyzt_units()[0] == "mm"
    assert not [p for p in out.rglob(".*")]  # atomic writes leave no temp files behind
    assert (out / "metadata.csv").read_text().splitlines()[0] == "eid,sex,age,bmi,health"


def test_regenerating_into_a_cohort_drops_stale_subjects(tmp_path):
    out = generate_cohort(tmp_path / "cohort", 3, seed=0, shape=SMALL)
    generate_cohort(out, 1, seed=0, shape=SMALL)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["1000001"]


def test_masks_have_all_labels_and_match_the_rendered_image():
    for health in ("healthy", "heart_failure", "myocardial_infarction"):
        volumes = render_subject(Attributes("female", 60, 26.0, health), np.random.default_rng(1), (64, 64, 8))
        for phase in ("ED", "ES"):
            image, mask = volumes[f"sa_{phase}"].astype(float), volumes[f"seg_sa_{phase}"]
            assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, LV, MYO, RV}
            assert (mask[:, :, 0] == RV).any() and not (mask[:, :, -1] == RV).any()  # RV stops before the apex
            # bSSFP: bright blood pool, dark myocardium, exactly where the mask says
            assert image[mask == LV].mean() > 2.0 * image[mask == MYO].mean()
            assert image[mask == RV].mean() > 2.0 * image[mask == MYO].mean()


def test_measured_ejection_fraction_matches_the_drawn_one():
    for k, health in enumerate(("healthy", "heart_failure", "myocardial_infarction") * 2):
        rng = np.random.default_rng(k)
        anatomy = anatomy_from_attributes(Attributes("male", 65, 28.0, health), rng)
        volumes = render(anatomy, (96, 96, 8), rng)
        ed, es = (volumes["seg_sa_ED"] == LV).sum(), (volumes["seg_sa_ES"] == LV).sum()
        assert abs((1 - es / ed) - anatomy.ef) < 0.02  # ES cavity area = (1 - ef) x ED, slice by slice


def test_heart_failure_dilates_the_lv_and_lowers_ejection_fraction():
    def lv_stats(health):
        group = _render_group(Attributes("male", 65, 28.0, health), 20)
        ed = np.array([(v["seg_sa_ED"] == LV).sum() for v in group], float)
        es = np.array([(v["seg_sa_ES"] == LV).sum() for v in group], float)
        return ed.mean(), (1 - es / ed).mean()

    healthy_ed, healthy_ef = lv_stats("healthy")
    hf_ed, hf_ef = lv_stats("heart_failure")
    assert hf_ed > 1.3 * healthy_ed
    assert healthy_ef > 0.5 and hf_ef < 0.42


def test_obesity_adds_bright_fat_outside_the_heart():
    def fat_pixels(bmi):
        group = _render_group(Attributes("female", 60, bmi, "healthy"), 20)
        return np.mean([((v["sa_ED"] > 0.6 * INTENSITY_SCALE) & (v["seg_sa_ED"] == 0)).sum() for v in group])

    assert fat_pixels(36.0) > 1.5 * fat_pixels(21.0)


def test_male_bodies_are_larger():
    def body_area(sex):
        group = _render_group(Attributes(sex, 60, 26.0, "healthy"), 20)
        return np.mean([binary_fill_holes(v["sa_ED"][:, :, 2] > 0.2 * INTENSITY_SCALE).sum() for v in group])

    assert body_area("male") > 1.05 * body_area("female")


def test_older_myocardium_is_darker_and_more_heterogeneous():
    def myo_stats(age):
        group = _render_group(Attributes("female", age, 26.0, "healthy"), 20, shape=(64, 64, 4))
        myo = [v["sa_ED"][v["seg_sa_ED"] == MYO].astype(float) for v in group]
        return np.mean([m.mean() for m in myo]), np.mean([m.std() / m.mean() for m in myo])

    (young_mean, young_cv), (old_mean, old_cv) = myo_stats(42), myo_stats(78)
    assert old_mean < 0.9 * young_mean and old_cv > 1.2 * young_cv


def test_render_rejects_incomplete_or_unknown_attributes():
    with pytest.raises(InputError, match="health"):
        render_subject(Attributes("male", 60, 25.0, "atrial_fibrillation"), np.random.default_rng(0), SMALL)
    with pytest.raises(InputError, match="needs sex, age, bmi and health"):
        render_subject(Attributes("male", None, 25.0, "healthy"), np.random.default_rng(0), SMALL)


def test_metadata_columns_ranges_and_built_in_bias():
    meta = sample_metadata(5000, seed=0)
    assert list(meta.columns) == ["eid", "sex", "age", "bmi", "health"] and meta["eid"].is_unique
    assert set(meta["sex"]) == {"female", "male"} and abs((meta["sex"] == "male").mean() - 0.5) < 0.03
    assert meta["age"].between(40, 79).all() and (meta["bmi"] == meta["bmi"].round(1)).all()
    assert abs(np.log(meta["bmi"]).median() - np.log(27.0)) < 0.05
    hf = meta["health"] == "heart_failure"
    assert 0.15 < hf.mean() < 0.30
    young_normal = (meta["age"] < 55) & (meta["bmi"] < 25)
    old_obese = (meta["age"] >= 65) & (meta["bmi"] >= 30)
    assert hf[young_normal].mean() < 0.2 * hf[old_obese].mean()
    # empirical HF rate agrees with the documented logistic (within 4 standard errors)
    p = np.array([hf_probability(s, a, b) for s, a, b in zip(meta["sex"], meta["age"], meta["bmi"])])
    assert abs(hf.sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_n_is_an_input_error(tmp_path, bad):
    with pytest.raises(InputError, match="positive integer"):
        generate_cohort(tmp_path / "x", bad)
    assert not (tmp_path / "x").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "data.synthetic", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_cohort_and_prints_composition(tmp_path):
    result = _cli("--out", str(tmp_path / "c"), "--n", "3", "--seed", "1", "--shape", "32", "32", "2")
    assert result.returncode == 0, result.stderr
    assert "3 subjects" in result.stdout and "health x sex" in result.stdout
    assert (tmp_path / "c" / MARKER).is_file() and len(list((tmp_path / "c").glob("*/seg_sa_ES.nii.gz"))) == 3


def test_cli_bad_arguments_exit_2_with_one_line(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("not a cohort")
    for args, expected in ((("--n", "0"), "positive integer"), (("--n", "2"), "not empty")):
        out = tmp_path / ("busy" if expected == "not empty" else "new")
        result = _cli("--out", str(out), *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_balanced_prevalence_removes_the_bias():
    from data.attributes import age_group, bmi_group
    from data.synthetic import BALANCED_HF_RATE, sample_metadata

    meta = sample_metadata(4000, seed=3, prevalence="balanced", first_eid=2000001)
    assert meta["eid"].iloc[0] == 2000001
    young_normal = meta[(meta["age"].map(age_group) == "<55") & (meta["bmi"].map(bmi_group) == "<25")]
    old_obese = meta[(meta["age"].map(age_group) == "65+") & (meta["bmi"].map(bmi_group) == ">30")]
    for cell in (young_normal, old_obese):
        rate = (cell["health"] == "heart_failure").mean()
        assert abs(rate - BALANCED_HF_RATE) < 4 * (BALANCED_HF_RATE * (1 - BALANCED_HF_RATE) / len(cell)) ** 0.5
