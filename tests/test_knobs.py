"""run/knobs.py: per-level configs, the arms' gains over real-only, the appearance-sign measure."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data.cohort import LV, MYO
from data.errors import InputError
from data.slices import SliceSet, attributes_frame
from run.knobs import _myo_contrast, arm_gains, cohort_summary, level_config

ROOT_CONFIG = "configs/smoke.yaml"


def _test_set(n: int = 12) -> SliceSet:
    rng = np.random.default_rng(0)
    records = [{"subject_id": f"s{i}", "sex": ("female", "male")[i % 2], "age": 45.0 + 3 * i, "bmi": 22.0 + i,
                "health": ("healthy", "heart_failure")[(i // 2) % 2], "prompt": ""} for i in range(n)]
    images = rng.uniform(-1, 1, (n, 2, 8, 8))
    return SliceSet(images, np.zeros((n, 2, 8, 8), np.uint8), [r["subject_id"] for r in records], np.zeros(n),
                    attributes_frame(records))


def test_level_config_sets_the_knob_and_names_the_level():
    cfg = level_config(ROOT_CONFIG, ["experiment.n_boot=7"], "preserved_ef", 0.5)
    assert cfg.data.phantom.preserved_ef == 0.5 and cfg.name == "preserved_ef-0.5" and cfg.experiment.n_boot == 7
    with pytest.raises(InputError, match="preserved_ef"):
        level_config(ROOT_CONFIG, [], "preserved_ef", 2.0)


def test_arm_gains_pairs_each_arm_with_real_only(tmp_path):
    test = _test_set()
    labels = (test.attributes["health"] == "heart_failure").astype(int).to_numpy()
    runs = [{"arm": "real", "seed": s, "scores": [0.0] * len(labels)} for s in (0, 1)]  # never positive: BA 0.5
    runs += [{"arm": "perfect", "seed": s, "scores": labels.astype(float).tolist()} for s in (0, 1)]
    aggregate = {arm: {"worst_group_balanced_accuracy": {"mean": v, "std": 0.0}} for arm, v in (("real", 0.5),
                                                                                                ("perfect", 1.0))}
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "experiment.json").write_text(json.dumps(
        {"test": {"subject_ids": test.subject_ids, "labels": labels.tolist()}, "runs": runs, "aggregate": aggregate}))
    cfg = level_config(ROOT_CONFIG, ["experiment.n_boot=50"], "preserved_ef", 0.0)
    gains = arm_gains(cfg, tmp_path, test)
    assert "gain_over_real" not in gains["real"]
    gain = gains["perfect"]["gain_over_real"]
    assert gain["point"] == pytest.approx(0.5) and gain["lo"] > 0 and gain["interval"] == "above 0"
    other = _test_set(10)
    with pytest.raises(InputError, match="another test set"):
        arm_gains(cfg, tmp_path, other)


def test_myo_contrast_is_myocardium_over_blood_on_unit_intensities():
    mask = np.zeros((1, 2, 4, 4), np.uint8)
    mask[..., :2, :] = LV
    mask[..., 2:, :] = MYO
    image = np.where(mask == LV, 1.0, -0.5)  # [0, 1]: blood 1.0, myocardium 0.25
    slices = SliceSet(image, mask, ["a"], np.zeros(1), attributes_frame([{"subject_id": "a"}]))
    assert _myo_contrast(slices, np.array([True])) == pytest.approx(0.25)


def test_cohort_summary_separates_geometry_from_appearance():
    """Heart failure here is a low EF only: geometry tells it perfectly, the (equal) contrast not at all."""
    yy, xx = np.mgrid[:32, :32]
    radius = np.hypot(yy - 15.5, xx - 15.5)
    images, masks, records = [], [], []
    for i, (health, ef) in enumerate([("heart_failure", 0.3), ("healthy", 0.6)] * 4):
        frames = []
        for r_lv in (8.0, 8.0 * np.sqrt(1 - ef)):  # ED, ES: area ratio 1 - ef
            frames.append(np.where(radius < r_lv, LV, np.where(radius < r_lv + 3, MYO, 0)).astype(np.uint8))
        masks.append(frames)
        images.append([np.where(m == LV, 1.0, np.where(m == MYO, -0.4, -1.0)) for m in frames])
        records.append({"subject_id": f"s{i}", "health": health})
    summary = cohort_summary(SliceSet(images, masks, [r["subject_id"] for r in records], np.zeros(8),
                                      attributes_frame(records)), pixel_mm=2.0)
    assert summary["auroc_geometry"] == 1.0 and summary["auroc_appearance"] == 0.5
    assert summary["heart_failure"]["ef_proxy_median"] < summary["other"]["ef_proxy_median"]
    assert summary["heart_failure"]["myo_contrast_mean"] == pytest.approx(0.3)
