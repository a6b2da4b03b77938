"""The debiasing experiment: one classifier per arm x seed (x generator where the arm uses synthetic data), all
scored on the same real test set.

Arms differ ONLY in their training set and training settings (same test set, seeds and ClassifierConfig):
  real             the real training slices
  reweighted       the same, drawn with metagroup-balanced sampling (label x sex x age x BMI; the classic baseline)
  real+synthetic   real plus the synthetic samples of the rebalancing plan (under-represented subgroups)
  synthetic        synthetic only (sanity check: does generated data carry the label at all?)
Baselines that rule out simpler explanations of a real+synthetic gain (issue 13):
  threshold        the real arm's classifier, its decision threshold chosen on its own validation subjects
                   (maximising balanced accuracy; logit adjustment) -- a prior/threshold shift
  oversampled      metagroup-balanced sampling + classical augmentation (classify/augment.py)
  compute-matched  experiment.compute_matched_base (real or reweighted) trained for exactly the optimiser steps the
                   real+synthetic arm takes -- extra steps alone
  ef-rule          no network: the central slice's area EF from the masks, cut-off fitted on the real training
                   subjects (classify/baselines.py); deterministic, so its seeds agree
  oracle           real plus as many extra REAL phantom subjects of the plan's cells as the plan has synthetic
                   samples (data/oracle.py); phantom only, skipped on a real cohort
Model selection: train_classifier holds out val_fraction of the arm's OWN training subjects; a synthetic sample
sits with its mask donor (plan.csv mask_subject_id) in that split, so no donor straddles it, and no arm looks at
the test set before it is scored.
Uncertainty, the primary endpoint's CI and the Holm-corrected comparisons: classify/comparisons.py (arms using
synthetic data run once per separately trained generator x seed, so its bootstrap resamples generators too).
Primary endpoint (declared in the config before running): experiment.primary_metric of primary_arm minus
primary_baseline, with its 95% CI, verdict and minimum detectable effect. The baseline is NAMED, not chosen from
results: each arm validates on its own held-out training subjects (arm c's include synthetic ones; a rule has
none), so validation scores are not comparable across arms and a "best on validation" pick would compare numbers
on different data; a name fixed before running cannot leak the test set either. The primary arm is compared with
every BASELINES arm that ran.
Groups: experiment.groups names what per-group numbers, worst group and disparities are taken over, and what the
reweighted arm balances: sex, age group and BMI group by default; [health] for a cohort without them (ACDC), where
a group's balanced accuracy is its accuracy (TPR of a positive group, TNR of a negative one).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from classify.comparisons import (THRESHOLD, aggregate_runs, arm_intervals, bootstrap_arms, compare_with_baselines,
                                  predictions_of, primary_endpoint)
from classify.fairness import SENSITIVE_COLUMNS, check_columns, fairness_summary, sensitive_frame, subgroup_metrics
from classify.resnet import ClassifierConfig
from classify.baselines import best_threshold, ef_rule_scores, fit_ef_rule, shift_to_threshold, subject_ef
from classify.train import ClassifierTrainConfig, planned_steps, predict_proba, train_classifier, validation_split
from classify.experiment_result import ExperimentResult
from data.attributes import is_positive
from data.errors import InputError
from data.fields import bounded, check_fields
from data.prompts import prompt_to_attributes
from data.slices import SliceSet

ARMS = ("real", "reweighted", "real+synthetic", "synthetic", "threshold", "oversampled", "compute-matched",
        "ef-rule", "oracle")
ARM_LABELS = {"real": "(a) real", "reweighted": "(b) reweighted", "real+synthetic": "(c) real+synthetic",
              "synthetic": "(d) synthetic", "threshold": "(e) threshold", "oversampled": "(f) oversampled",
              "compute-matched": "(g) compute-matched", "ef-rule": "(h) EF rule", "oracle": "(i) oracle"}
NEEDS_SYNTHETIC = ("real+synthetic", "synthetic", "compute-matched")  # skipped without synthetic samples
PER_GENERATOR = ("real+synthetic", "synthetic")  # run once per generator x classifier seed
DETERMINISTIC = ("ef-rule",)  # arms without classifier seeds (a fixed rule): one run, as n_generators = n_seeds = 1
BALANCED = ("reweighted", "oversampled")  # arms drawn metagroup-balanced
# What an arm is for: the primary arm is compared with every "baseline" (an arm not listed counts as one); "check"
# arms are reported, not compared (synthetic-only asks whether generated data carries the label; the oracle, real
# subjects no real registry could add, is the ceiling rebalancing could reach).
ARM_ROLES = {"real": "baseline", "reweighted": "baseline", "real+synthetic": "debiased", "synthetic": "check",
             "oracle": "check"}
BASELINES = tuple(a for a in ARMS if ARM_ROLES.get(a, "baseline") == "baseline")
DEBIASED = "real+synthetic"
PRIMARY_METRICS = ("worst_group_balanced_accuracy", "balanced_accuracy")
SYNTHETIC_PREFIX = "syn-"


@dataclass
class ExperimentConfig:
    arms: tuple = ARMS
    seeds: tuple = (0, 1, 2)
    positive: tuple = ("heart_failure",)  # health conditions labelled 1
    n_boot: int = 500
    val_fraction: float = 0.2  # of each arm's own training subjects, for best-epoch selection
    groups: tuple = SENSITIVE_COLUMNS  # per-group metrics over these (sex, age_group, bmi_group, health)
    # prevalence control (the method: 0.25 / 0.10 / 0.01): positive share of the real training, validation and test
    # subjects after subsampling them (data/prevalence.py, run/downstream.py); None keeps the split as drawn
    train_prevalence: Optional[float] = bounded(None, lo=0, hi=1, lo_open=True, hi_open=True)
    val_prevalence: Optional[float] = bounded(None, lo=0, hi=1, lo_open=True, hi_open=True)
    test_prevalence: Optional[float] = bounded(None, lo=0, hi=1, lo_open=True, hi_open=True)
    # the primary endpoint, fixed before running (module docstring): metric of primary_arm minus primary_baseline
    primary_metric: str = "worst_group_balanced_accuracy"
    primary_arm: str = DEBIASED
    primary_baseline: str = "reweighted"
    alpha: float = 0.05  # two-sided, for the primary CI (1 - alpha) and the Holm-corrected secondary family
    augment_strength: float = 1.0  # the oversampled arm's classical augmentation (classify/augment.py ranges x this)
    compute_matched_base: str = "real"  # the arm whose data the compute-matched arm trains on: real or reweighted

    def __post_init__(self) -> None:
        check_experiment_config(self)


def check_experiment_config(cfg: ExperimentConfig) -> None:
    unknown = [a for a in cfg.arms if a not in ARMS]
    if unknown or not cfg.arms or len(set(cfg.arms)) != len(cfg.arms):
        raise InputError("experiment.arms", f"expected distinct arms from {', '.join(ARMS)}, got {list(cfg.arms)}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise InputError("experiment.seeds", f"expected distinct integer seeds, got {list(cfg.seeds)}")
    if not cfg.positive:
        raise InputError("experiment.positive", "expected at least one health condition to label positive")
    if int(cfg.n_boot) < 1 or not 0.0 <= float(cfg.val_fraction) < 1.0:
        raise InputError("experiment", f"expected n_boot >= 1 and val_fraction in [0, 1), got {cfg.n_boot}, "
                                       f"{cfg.val_fraction}")
    check_columns(cfg.groups, "experiment.groups")
    check_fields(cfg, "experiment")
    if cfg.primary_metric not in PRIMARY_METRICS:
        raise InputError("experiment.primary_metric", f"expected one of {', '.join(PRIMARY_METRICS)}, got "
                                                      f"{cfg.primary_metric!r}")
    for key in ("primary_arm", "primary_baseline"):
        if getattr(cfg, key) not in ARMS:
            raise InputError(f"experiment.{key}", f"expected an arm from {', '.join(ARMS)}, got {getattr(cfg, key)!r}")
    if cfg.primary_arm == cfg.primary_baseline:
        raise InputError("experiment.primary_baseline", f"expected an arm other than primary_arm {cfg.primary_arm!r}")
    if not 0.0 < float(cfg.alpha) < 0.5:
        raise InputError("experiment.alpha", f"expected a level in (0, 0.5), got {cfg.alpha}")
    if cfg.compute_matched_base not in ("real", "reweighted"):
        raise InputError("experiment.compute_matched_base", f"expected real or reweighted, got {cfg.compute_matched_base!r}")
    if not 0.0 <= float(cfg.augment_strength) <= 2.0:
        raise InputError("experiment.augment_strength", f"expected a number in [0, 2], got {cfg.augment_strength}")


def is_missing(value) -> bool:
    """None, NaN or blank text."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _attributes(slices: SliceSet) -> pd.DataFrame:
    """slices.attributes with sex and health read from the prompt where the column is empty."""
    attrs = slices.attributes.copy()
    for column in ("sex", "health"):
        attrs[column] = [getattr(prompt_to_attributes(p or ""), column) if is_missing(v) else v
                         for v, p in zip(attrs[column], attrs["prompt"])]
    return attrs


def labels_of(slices: SliceSet, positive: tuple = ("heart_failure",)) -> np.ndarray:
    """(N,) int64: 1 where the sample's health condition is in `positive`, else 0 (missing health -> 0)."""
    health = _attributes(slices)["health"]
    return np.array([int(is_positive(None if is_missing(h) else h, tuple(positive))) for h in health], dtype=np.int64)


def _groups(slices: SliceSet, source: str, donors: Optional[dict] = None) -> pd.DataFrame:
    """One row per sample: subject_id, sex, age, bmi, health, source, split_group; synthetic subject ids get the
    'syn-' prefix, and their split_group is their mask donor's subject id (donors: sample id -> donor id) where
    known, else their own id."""
    attrs = _attributes(slices)
    ids = [s if source != "synthetic" or s.startswith(SYNTHETIC_PREFIX) else SYNTHETIC_PREFIX + s
           for s in slices.subject_ids]
    donors = donors or {}
    split = [str(donors.get(s, i)) if source == "synthetic" else i for s, i in zip(slices.subject_ids, ids)]
    return pd.DataFrame({"subject_id": ids, "sex": attrs["sex"], "age": attrs["age"], "bmi": attrs["bmi"],
                         "health": attrs["health"], "source": source, "split_group": split})


def arm_training_set(arm: str, real_train: SliceSet, synthetic: Optional[SliceSet],
                     positive: tuple = ("heart_failure",), donors: Optional[dict] = None,
                     oracle: Optional[SliceSet] = None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, bool]:
    """-> (images (N, 2, S, S), labels (N,), groups_df (N rows: subject_id, sex, age, bmi, health, source,
    split_group), balanced_sampling). Only the BALANCED arms sample metagroup-balanced. threshold, ef-rule and
    compute-matched train on the real slices (ArmRunner.data gives compute-matched its base arm's set)."""
    if arm not in ARMS:
        raise InputError("arm", f"unknown arm {arm!r}; expected one of {', '.join(ARMS)}")
    parts = [] if arm == "synthetic" else [(real_train, "real")]
    if arm in ("real+synthetic", "synthetic"):
        if synthetic is None or len(synthetic) == 0:
            raise InputError(f"arm {arm}", "needs synthetic samples, got none")
        if synthetic.images.shape[1:] != real_train.images.shape[1:]:
            raise InputError("synthetic.images", f"expected samples shaped {real_train.images.shape[1:]} like the "
                                                 f"real slices, got {synthetic.images.shape[1:]}")
        parts.append((synthetic, "synthetic"))
    if arm == "oracle":
        if oracle is None or len(oracle) == 0:
            raise InputError("arm oracle", "needs extra real subjects, got none")
        parts.append((oracle, "oracle"))
    frames = [_groups(s, source, donors) for s, source in parts]
    shared = set(frames[0]["subject_id"]) & set(frames[-1]["subject_id"]) if len(frames) == 2 else set()
    if shared:
        raise InputError(f"{parts[-1][1]} subject ids", f"{len(shared)} also name real subjects (e.g. {sorted(shared)[0]})")
    groups = pd.concat(frames, ignore_index=True)
    images = np.concatenate([s.images for s, _ in parts])
    labels = np.concatenate([labels_of(s, positive) for s, _ in parts])
    return images, labels, groups, arm in BALANCED


class ArmRunner:
    """Trains and scores one arm x seed (the arms' per-arm settings live here); a classifier two arms share
    (real, threshold) is trained once per seed."""

    def __init__(self, real_train: SliceSet, synthetic: Optional[SliceSet], exp_cfg: ExperimentConfig,
                 clf_cfg: ClassifierConfig, train_cfg: ClassifierTrainConfig, donors: Optional[dict] = None,
                 oracle: Optional[SliceSet] = None) -> None:
        self.real_train, self.synthetic, self.exp_cfg, self.oracle = real_train, synthetic, exp_cfg, oracle
        self.clf_cfg, self.train_cfg, self.donors = clf_cfg, train_cfg, donors
        self.positive, self._models = tuple(exp_cfg.positive), {}

    def data(self, arm: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, bool]:
        """The arm's training set as arm_training_set gives it (compute-matched: its base arm's)."""
        source = self.exp_cfg.compute_matched_base if arm == "compute-matched" else arm
        return arm_training_set(source, self.real_train, self.synthetic, self.positive, self.donors, self.oracle)

    def skip_reason(self, arm: str) -> Optional[str]:
        """Why the arm cannot run on these inputs, or None."""
        if arm in NEEDS_SYNTHETIC and (self.synthetic is None or len(self.synthetic) == 0):
            return "no synthetic samples"
        if arm == "oracle" and (self.oracle is None or len(self.oracle) == 0):
            return "no extra real subjects to draw (a real cohort; only the phantom can render more)"
        if arm == "threshold" and self.exp_cfg.val_fraction <= 0:
            return "needs validation subjects (experiment.val_fraction > 0) to choose its threshold on"
        labels = self.data(arm)[1]
        if arm == "ef-rule" and len(np.unique(labels[np.isfinite(subject_ef(self.real_train)
                                                              .reindex(self.real_train.subject_ids))])) < 2:
            return "the training masks give no EF (no LV at ED) for one of the classes"
        if len(np.unique(labels)) < 2:
            return f"training set holds only class {labels[0]}" if len(labels) else "no training data"
        return None

    def train_config(self, arm: str, seed: int) -> ClassifierTrainConfig:
        """The arm's ClassifierTrainConfig for one seed: seed, sampling, augmentation and step budget."""
        balanced = self.data(arm)[3] or (arm == "compute-matched" and self.exp_cfg.compute_matched_base == "reweighted")
        cfg = replace(self.train_cfg, seed=int(seed), balanced_sampling=balanced,
                      val_fraction=self.exp_cfg.val_fraction, val_prevalence=self.exp_cfg.val_prevalence, steps=0)
        if arm == "oversampled":
            cfg = replace(cfg, augment_strength=float(self.exp_cfg.augment_strength))
        if arm == "compute-matched":  # the steps real+synthetic takes with this seed (its own validation split)
            _, labels, groups, _ = self.data("real+synthetic")
            cfg = replace(cfg, steps=planned_steps(groups, labels, self.train_config("real+synthetic", seed)))
        return cfg

    def _model(self, arm: str, seed: int):
        key = ("real" if arm == "threshold" else arm, int(seed))
        if key not in self._models:
            images, labels, groups, _ = self.data(key[0])
            self._models[key] = train_classifier(images, labels, groups, self.train_config(key[0], seed),
                                                 progress=False, model_cfg=self.clf_cfg, metagroups=self.exp_cfg.groups)
        return self._models[key]

    def scores(self, arm: str, seed: int, test: SliceSet) -> tuple[np.ndarray, dict, int]:
        """-> (P(positive) per test row (N_test,), history, n_train) of one arm x seed."""
        images, labels, groups, _ = self.data(arm)
        if arm == "ef-rule":  # deterministic: every seed gets the same rule
            cutoff = fit_ef_rule(self.real_train, labels)
            return ef_rule_scores(test, cutoff), {"ef_cutoff": cutoff}, len(labels)
        model, history = self._model(arm, seed)
        scores = predict_proba(model, test.images)
        if arm == "threshold":  # chosen on the real arm's own validation split, the one train_classifier held out
            cfg = self.train_config("real", seed)
            val_idx = validation_split(groups, labels, cfg.val_fraction, cfg.seed)[1]
            val_y = labels[val_idx]
            threshold = best_threshold(val_y, predict_proba(model, images[val_idx])) \
                if len(np.unique(val_y)) == 2 else THRESHOLD
            return shift_to_threshold(scores, threshold), {**history, "threshold": threshold}, len(labels)
        return scores, history, len(labels)


def run_experiment(real_train: SliceSet, real_test: SliceSet, synthetic: Sequence[SliceSet],
                   exp_cfg: ExperimentConfig, clf_cfg: ClassifierConfig, train_cfg: ClassifierTrainConfig,
                   progress: bool = True, donors: Optional[dict] = None,
                   oracle: Optional[SliceSet] = None) -> ExperimentResult:
    """Train every runnable arm once per classifier seed (and per generator where it uses synthetic data) and
    score it on real_test (see the module docstring).

    synthetic: one SliceSet per separately trained generator (empty: the synthetic arms are skipped).
    train_cfg.seed, balanced_sampling, val_fraction, augment_strength and steps are set per run (ArmRunner).
    donors: synthetic sample id -> its mask donor's subject id (grouped together in validation splits);
    oracle: extra real subjects for the oracle arm (phantom only; None skips it).
    """
    check_experiment_config(exp_cfg)
    columns = tuple(exp_cfg.groups)
    if len(real_test) == 0:
        raise InputError("real_test", "expected at least one test slice")
    leaked = set(real_train.subject_ids) & set(real_test.subject_ids)
    if oracle is not None:
        leaked |= set(oracle.subject_ids) & set(real_test.subject_ids)
    if leaked:
        raise InputError("real_test", f"{len(leaked)} subject(s) also in real_train (e.g. {sorted(leaked)[0]}); "
                                      "the test set must hold unseen subjects")
    if isinstance(synthetic, SliceSet) or synthetic is None:
        raise InputError("synthetic", "expected a list of SliceSets, one per generator (empty for none)")
    synthetic = [s for s in synthetic if s is not None and len(s)]
    positive = tuple(exp_cfg.positive)
    y_test, groups_test = labels_of(real_test, positive), _groups(real_test, "real")
    result = ExperimentResult(
        config={"experiment": asdict(exp_cfg), "classifier": asdict(clf_cfg), "train": asdict(train_cfg),
                "threshold": THRESHOLD, "n_generators": len(synthetic),
                "intervals": "95% hierarchical bootstrap: test subjects, then generators, then seeds within each"},
        test={"n_slices": len(real_test), "n_subjects": len(set(real_test.subject_ids)),
              "n_positive": int(y_test.sum()), "subject_ids": list(real_test.subject_ids), "labels": y_test})
    # one runner per generator (all share the plan, so compute-matched counts its steps on the first); the arms that
    # do not use a generator run on the first runner, which caches the real arm's models for the threshold arm
    runners = [ArmRunner(real_train, s, exp_cfg, clf_cfg, train_cfg, donors, oracle) for s in synthetic] or \
        [ArmRunner(real_train, None, exp_cfg, clf_cfg, train_cfg, donors, oracle)]

    def plan(arm: str) -> tuple[list, tuple]:  # (generator indices or [None], classifier seeds) of one arm
        return ((list(range(len(synthetic))) if arm in PER_GENERATOR else [None]),
                (tuple(exp_cfg.seeds[:1]) if arm in DETERMINISTIC else tuple(exp_cfg.seeds)))

    bar = tqdm(total=sum(len(g) * len(s) for g, s in map(plan, exp_cfg.arms)), desc="experiment", unit="run",
               disable=not progress)
    for arm in exp_cfg.arms:
        generators, seeds = plan(arm)
        reason = runners[0].skip_reason(arm)
        if reason is not None:
            result.skipped[arm] = reason
            bar.total -= len(generators) * len(seeds)
            continue
        for generator in generators:
            runner = runners[0 if generator is None else generator]
            for seed in seeds:
                bar.set_postfix(arm=arm, generator=generator, seed=seed)
                scores, history, n_train = runner.scores(arm, seed, real_test)
                result.runs.append(run_record(arm, generator, seed, scores, y_test, groups_test, columns,
                                              n_train=n_train, history=history))
                bar.update(1)
    bar.close()
    return analyse_runs(result, y_test, groups_test, real_test.subject_ids, exp_cfg)


def run_record(arm: str, generator, seed: int, scores: np.ndarray, y_test: np.ndarray, groups_test: pd.DataFrame,
               columns: tuple, **extra) -> dict:
    """One arm x generator x seed's entry of ExperimentResult.runs: its scores (N,) on the test rows, decided at
    THRESHOLD, with the fairness summary and the per-subgroup table (fairlearn) of those decisions."""
    y_pred = (np.asarray(scores) >= THRESHOLD).astype(int)
    return {"arm": arm, "generator": generator, "seed": int(seed), **extra, "scores": np.asarray(scores),
            "summary": fairness_summary(y_test, y_pred, scores, groups_test, columns=columns),
            "subgroups": subgroup_metrics(y_test, y_pred, scores, groups_test, columns)}


def analyse_runs(result: ExperimentResult, y_test: np.ndarray, groups_test: pd.DataFrame, subject_ids,
                 exp_cfg: ExperimentConfig) -> ExperimentResult:
    """Fill result's aggregate, intervals, primary endpoint and Holm-corrected comparisons from result.runs
    (generator-major per arm) on the test rows (y_test, groups_test, subject_ids: the bootstrap's clusters)."""
    columns = tuple(exp_cfg.groups)
    codes = sensitive_frame(groups_test, columns).to_numpy().astype(str)
    for arm in dict.fromkeys(r["arm"] for r in result.runs):
        result.aggregate[arm] = aggregate_runs([r["summary"] for r in result.runs if r["arm"] == arm], columns)
    preds = predictions_of(result.runs, len(y_test))  # arm -> (N_test, n_generators, n_seeds) 0/1
    if preds:
        boot = bootstrap_arms(y_test, preds, codes, subject_ids, int(exp_cfg.n_boot), columns)
        result.intervals = arm_intervals(y_test, preds, codes, subject_ids, boot, columns)
        result.primary = primary_endpoint(boot, exp_cfg, result.skipped)
        result.comparison, result.secondary = compare_with_baselines(result.aggregate, boot, exp_cfg, columns,
                                                                      BASELINES)
        key = f"{exp_cfg.primary_arm} vs {exp_cfg.primary_baseline}"
        if key in result.comparison:  # the primary comparison's verdict comes from its CI, not from Holm
            result.comparison[key]["gain"]["verdict"] = result.primary["verdict"]
    return result
