"""Cross-validation (issue 14): stratified folds, fold sub-runs' splits, patient-level scoring and pooling, donor
strategies and their diversity, and the CV run end to end on a tiny ACDC-layout fixture."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from classify.experiment import ExperimentConfig
from classify.patients import patient_labels, patient_scores, pool_folds
from data.cohort import LV, MYO, RV
from data.errors import InputError
from data.planner import PlanTarget, deform_mask, jittered, plan_rebalancing
from data.split import stratified_folds
from ddpm.checkpoint import load_checkpoint
from evaluation.diversity import mask_diversity
from geometry.descriptors import describe_ed_es
from run.config import load_run_config
from run.prepare_data import prepare_data
from tests.fixtures import write_acdc_fixture

ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc"
GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")


def acdc_like(seed: int = 0) -> tuple[list[str], list[str]]:
    """100 subjects, 20 per group, BMI categories drawn unevenly per group: (ids, strata 'group|bmi')."""
    rng = np.random.default_rng(seed)
    ids = [f"patient{i:03d}" for i in range(1, 101)]
    strata = [f"{GROUPS[i % 5]}|{rng.choice(['<25', '25-30', '>30'], p=[0.5, 0.35, 0.15])}" for i in range(100)]
    return ids, strata


def test_folds_partition_the_subjects_and_hold_the_strata():
    ids, strata = acdc_like()
    folds = stratified_folds(ids, strata, 5, seed=3)
    assert sorted(Counter(folds).values()) == [20] * 5  # every subject in exactly one fold, equal sizes
    for name in set(strata):
        per_fold = np.bincount(folds[np.array(strata) == name], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    group = np.array([s.split("|")[0] for s in strata])
    for g in GROUPS:  # health groups exactly balanced: 4 per fold
        assert (np.bincount(folds[group == g], minlength=5) == 4).all()
    assert (stratified_folds(ids, strata, 5, seed=4) != folds).any()


def test_folds_ignore_row_order_and_keep_a_subjects_rows_together():
    ids, strata = acdc_like()
    rows = np.repeat(np.arange(100), 3)  # three slices per subject
    order = np.random.default_rng(0).permutation(len(rows))
    ids_rows, strata_rows = np.array(ids)[rows][order], np.array(strata)[rows][order]
    folds = stratified_folds(ids_rows, strata_rows, 5, seed=3)
    by_subject = pd.Series(folds).groupby(ids_rows).nunique()
    assert (by_subject == 1).all()
    expected = dict(zip(ids, stratified_folds(ids, strata, 5, seed=3)))
    assert all(expected[i] == f for i, f in zip(ids_rows, folds))


def test_folds_reject_bad_k_and_mixed_strata():
    with pytest.raises(InputError, match="k"):
        stratified_folds(["a", "b"], ["x", "x"], 3, 0)
    with pytest.raises(InputError, match="different strata"):
        stratified_folds(["a", "a", "b"], ["x", "y", "x"], 2, 0)


@pytest.mark.skipif(not ACDC.is_dir(), reason="../shared/data/acdc absent")
def test_acdc_folds_balance_groups_and_bmi():
    from data.acdc import GROUP_TO_HEALTH, read_info
    from data.attributes import bmi_from_height_weight, bmi_group
    ids, strata = [], []
    for info_path in sorted(ACDC.glob("patient*/Info.cfg")):
        info = read_info(info_path)
        ids.append(info_path.parent.name)
        strata.append(f"{GROUP_TO_HEALTH[info['Group']]}|"
                      f"{bmi_group(bmi_from_height_weight(info['Height'], info['Weight'], str(info_path)))}")
    folds = stratified_folds(ids, strata, 5, seed=0)
    group = np.array([s.split("|")[0] for s in strata])
    for g in set(group):
        counts = np.bincount(folds[group == g], minlength=5)
        assert counts.max() - counts.min() <= 1


def test_fold_subruns_hold_out_their_fold_only(tmp_path):
    root = write_acdc_fixture(tmp_path, n=10, shape=(24, 24, 3))
    tested = []
    for fold in (0, 1):
        cfg = load_run_config(Path("configs/smoke.yaml"), [
            f"data.root={root}", "data.layout=acdc", "data.folds=2", f"data.fold={fold}", "data.split_seed=5",
            "data.stratify=[health, bmi_group]", "data.rare={key: health, value: myocardial_infarction, keep: 0.5}"])
        data = prepare_data(cfg.data, tmp_path / f"fold-{fold}", progress=False)
        split = json.loads((tmp_path / f"fold-{fold}" / "split.json").read_text())
        assert set(data.test.subject_ids) == set(split["test"])
        assert not set(split["test"]) & set(split["train"]) and not set(split["test"]) & set(data.train.subject_ids)
        assert not set(split["test"]) & set(split["rare"]["dropped"])  # data.rare drops training patients only
        tested += split["test"]
    assert sorted(tested) == [f"patient{i:03d}" for i in range(1, 11)]  # each patient tested exactly once


def test_cv_config_errors_are_one_line():
    with pytest.raises(InputError, match="cv.folds"):
        load_run_config(Path("configs/smoke.yaml"), ["cv.folds=2"])  # no cohort folder
    with pytest.raises(InputError, match="data.fold"):
        load_run_config(Path("configs/smoke.yaml"), ["data.folds=2", "data.fold=2"])
    with pytest.raises(InputError, match="cv.fold_seeds"):
        load_run_config(Path("configs/smoke.yaml"), ["cv.fold_seeds=[1, 1]"])
    with pytest.raises(InputError, match="data.stratify"):
        load_run_config(Path("configs/smoke.yaml"), ["data.stratify=[height]"])


def test_patient_scores_average_slices():
    ids, means = patient_scores([0.2, 0.9, 0.4, 0.6], ["b", "a", "b", "c"])
    assert ids == ["a", "b", "c"] and np.allclose(means, [0.9, 0.3, 0.6])  # one slice keeps its probability
    order = np.random.default_rng(1).permutation(4)
    ids2, means2 = patient_scores(np.array([0.2, 0.9, 0.4, 0.6])[order], np.array(["b", "a", "b", "c"])[order])
    assert ids2 == ids and np.allclose(means2, means)
    with pytest.raises(InputError, match="both labels"):
        patient_labels([0, 1], ["a", "a"])


def _fold_experiments(slices_of: dict, seeds=(0, 1), k: int = 2) -> list[dict]:
    """Fake experiment.json dicts of k folds per fold seed: two arms, one classifier seed, scores per slice that
    depend on the patient only (so repeating a patient's slices changes no patient's mean)."""
    patients = sorted(slices_of)
    rng = np.random.default_rng(0)
    score = {p: rng.uniform() for p in patients}
    label = {p: int(i % 3 == 0) for i, p in enumerate(patients)}
    out = []
    for s in seeds:
        order = np.random.default_rng(s).permutation(patients)
        for fold in range(k):
            rows = [p for p in order[fold::k] for _ in range(slices_of[p])]
            runs = [{"arm": arm, "generator": None, "seed": 0, "n_train": 5,
                     "scores": [min(1.0, score[p] + shift) for p in rows]} for arm, shift in (("real", 0.0), ("oversampled", 0.1))]
            out.append({"fold_seed": s, "fold": fold, "experiment": {
                "config": {}, "test": {"subject_ids": rows, "labels": [label[p] for p in rows]}, "runs": runs}})
    return out


def _attributes(patients) -> pd.DataFrame:
    return pd.DataFrame({"subject_id": patients, "sex": None, "age": None, "bmi": [22.0 + 3 * (i % 4) for i in range(len(patients))],
                         "health": ["myocardial_infarction" if i % 3 == 0 else "healthy" for i in range(len(patients))]})


@pytest.mark.slow  # fairlearn's per-run tables: ~3 s idle, ~7 s on the loaded 2 cores
def test_pooling_counts_patients_not_slices():
    patients = [f"p{i:02d}" for i in range(12)]
    cfg = ExperimentConfig(arms=("real", "oversampled"), seeds=(0,), positive=("myocardial_infarction",),
                           groups=("health",), n_boot=50, primary_arm="oversampled", primary_baseline="real")
    one = pool_folds(_fold_experiments({p: 1 for p in patients}), _attributes(patients), cfg)
    many = pool_folds(_fold_experiments({p: 1 + 4 * (i % 2) for i, p in enumerate(patients)}), _attributes(patients), cfg)
    assert one.test["n_subjects"] == 12 and one.test["subject_ids"] == patients
    assert [len(r["scores"]) for r in many.runs] == [12] * 4  # arm x fold seed, one score per patient
    assert [r["generator"] for r in many.runs if r["arm"] == "real"] == [0, 1]  # the fold-seed level
    assert one.primary["point"] == many.primary["point"] and (one.primary["lo"], one.primary["hi"]) == \
        (many.primary["lo"], many.primary["hi"])  # the bootstrap resampled patients: extra slices weigh nothing
    assert one.intervals["real"]["counts"] == many.intervals["real"]["counts"]


def test_pooling_needs_every_patient_once_per_fold_seed():
    patients = [f"p{i:02d}" for i in range(6)]
    folds = _fold_experiments({p: 1 for p in patients})
    cfg = ExperimentConfig(arms=("real", "oversampled"), seeds=(0,), positive=("myocardial_infarction",),
                           groups=("health",), n_boot=10)
    with pytest.raises(InputError, match="exactly once"):
        pool_folds(folds[:-1], _attributes(patients), cfg)


def heart(lv: int, myo: int, size: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - size / 2, xx - size / 2)
    mask = np.zeros((size, size), np.uint8)
    mask[np.hypot(yy - size / 2, xx - size / 2 + lv + myo + 4) <= 5] = RV
    mask[d <= lv + myo] = MYO
    mask[d <= lv] = LV
    return mask


def test_deform_is_the_same_on_both_frames_and_keeps_the_ef_proxy():
    pair = np.stack([heart(10, 3), heart(7, 4)])
    ef = describe_ed_es(pair[0], pair[1])["ef_proxy"]
    moved = [deform_mask(pair, np.random.default_rng(s)) for s in range(6)]
    for m in moved:
        assert m.shape == pair.shape and set(np.unique(m)) == set(np.unique(pair))
        assert abs(describe_ed_es(m[0], m[1])["ef_proxy"] - ef) < 0.05  # one affine on ED and ES: area ratio kept
    same = deform_mask(np.stack([pair[0], pair[0]]), np.random.default_rng(3))
    assert (same[0] == same[1]).all()
    assert (deform_mask(pair, np.random.default_rng(2)) == moved[2]).all()
    assert len({m.tobytes() for m in moved}) == 6
    assert (jittered(pair, 0, 7) == pair).all() and (jittered(pair, 2, 2) == moved[2]).all()


def test_donor_strategies_and_their_diversity():
    attributes = pd.DataFrame({"subject_id": ["a", "a", "b", "c", "d"], "slice_row": range(5), "sex": None,
                               "age": None, "bmi": 24.0, "health": ["myocardial_infarction"] * 2 + ["healthy"] * 3})
    own = plan_rebalancing(attributes, PlanTarget(keys=("health",), mode="min_count", min_count=6), seed=0)
    deform = plan_rebalancing(attributes, PlanTarget(keys=("health",), mode="min_count", min_count=6, donors="deform"), seed=0)
    assert set(own["jitter"]) == {0, 1} and set(deform["jitter"]) == {2}
    assert list(own["mask_subject_id"]) == list(deform["mask_subject_id"])  # same donors, only the geometry differs
    with pytest.raises(InputError, match="donors"):
        PlanTarget(donors="other-groups")
    base = np.stack([heart(10, 3), heart(7, 4)])
    copies = np.stack([base] * 4)
    assert mask_diversity(copies, ["a"] * 4) == {"n_masks": 4, "n_donors": 1, "n_distinct_masks": 1,
                                                 "mean_pairwise_dice": 1.0}
    deformed = np.stack([jittered(base, 2, s) for s in range(4)])
    measured = mask_diversity(deformed, ["a"] * 4)
    assert measured["n_distinct_masks"] == 4 and measured["mean_pairwise_dice"] < 1.0


@pytest.mark.slow
def test_cv_end_to_end_on_a_tiny_acdc_layout(tmp_path):
    from train import main
    root = write_acdc_fixture(tmp_path, n=10, shape=(32, 32, 3))
    rc = main(["--config", "configs/smoke.yaml", "--data", str(root), "--runs", str(tmp_path / "runs"), "--name", "cv",
               "data.layout=acdc", "data.preprocess.all_lv_slices=true", "cv.folds=2", "cv.fold_seeds=[0]",
               "data.stratify=[health, bmi_group]", "data.rare={key: health, value: myocardial_infarction, keep: 1.0}",
               "plan.mode=equalise", "plan.keys=[health]", "plan.conditions=null", "plan.min_count=8",
               "plan.max_total=4", "plan.donors=deform", "experiment.positive=[myocardial_infarction]",
               "experiment.groups=[health, bmi_group]", "experiment.arms=[real, real+synthetic, oversampled, ef-rule]",
               "experiment.primary_baseline=oversampled", "experiment.seeds=[0]"])
    assert rc == 0
    run = tmp_path / "runs" / "cv"
    pooled = json.loads((run / "experiment" / "experiment.json").read_text())
    patients = [f"patient{i:03d}" for i in range(1, 11)]
    assert pooled["test"]["subject_ids"] == patients and pooled["primary"]["metric"] == "worst_group_balanced_accuracy"
    split = json.loads((run / "folds" / "seed-0" / "split.json").read_text())
    assert sorted(p for f in split["per_fold"] for p in f["test"]) == patients
    for fold in split["per_fold"]:  # the sub-run's own data stage held the fold out of every stage
        own = json.loads((run / "folds" / "seed-0" / f"fold-{fold['fold']}" / "split.json").read_text())
        assert own["test"] == fold["test"] and not set(own["test"]) & set(own["train"])
        for stage in ("vae", "ldm", "controlnet"):  # every trained stage was trained on this fold's data
            meta = load_checkpoint(run / "folds" / "seed-0" / f"fold-{fold['fold']}" / f"{stage}.safetensors",
                                   expect_stage=stage)[1]
            assert (meta["config"]["data"]["folds"], meta["config"]["data"]["fold"]) == (2, fold["fold"])
    record = json.loads((run / "cv.json").read_text())["folds"]
    assert all(r["donors"]["strategy"] == "deform" and {"own", "deform", "real"} <= set(r["donors"]) for r in record)
    assert (run / "report.md").is_file()
